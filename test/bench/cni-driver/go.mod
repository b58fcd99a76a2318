module berth.dev/bench/cni-driver

go 1.22
