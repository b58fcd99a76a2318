module berth.dev/cni-ipam/thin

go 1.22
