#!/usr/bin/env bash
# Extra environment of the IPAM daemon in the local region (printed as NAME=value lines for
# services.sh). Its resident allocator listens where infra/ipam.sh's network confs send the thin
# plugin (docs/ipam.md "The resident allocator"); its checker watches cell-a.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# Its own directory: the daemon makes it mode 700 (root only).
echo "IPAM_SOCKET=$BERTH_RUN_DIR/ipam/ipam.sock"
echo "BERTH_CELL=cell-a"
