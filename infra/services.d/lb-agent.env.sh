#!/usr/bin/env bash
# Extra environment of the lb-agent in the local region (NAME=value lines for services.sh): it
# serves LB group `local` with the region's nginx (infra/region.sh starts it; docs/traffic.md).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
echo "LB_GROUP=local"
echo "LB_HOST=$(hostname -s | tr -c 'A-Za-z0-9.\n-' '-')"
echo "LB_LISTEN=127.0.0.1:8080"
echo "NGINX_PREFIX=$BERTH_LOCAL/nginx"
echo "NGINX_PID_FILE=$BERTH_RUN_DIR/nginx.own.pid"
echo "NGINX_ERROR_LOG=$BERTH_LOG_DIR/nginx-error.log"
echo "NGINX_ACCESS_LOG=$BERTH_LOG_DIR/nginx-access.log"
[[ $(id -u) == 0 ]] && echo "NGINX_USER=root"
exit 0
