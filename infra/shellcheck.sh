#!/usr/bin/env bash
# `make check` (part of it): shellcheck on every shell script in infra/ and test/infra/. Scripts
# are followed into what they source (-x), from the script's own directory.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v shellcheck >/dev/null || die "shellcheck is missing: run infra/bootstrap.sh (Debian package shellcheck)"
cd "$BERTH_ROOT"
mapfile -t scripts < <(find infra test/infra -type f -name '*.sh' -not -path '*/node_modules/*' 2>/dev/null | sort)
shellcheck -x -P SCRIPTDIR "${scripts[@]}"
