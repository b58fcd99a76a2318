# shellcheck shell=bash
# Certificates and kubeconfigs of the local cells, made with openssl. Sourced by infra/cells.sh.
# Every key is ECDSA P-256 (quick to make; Kubernetes accepts it everywhere, including the
# service-account signing key). Existing files are kept, so certificates survive `cells.sh down`.

# pki_ca DIR NAME: a self-signed CA in DIR/ca.{crt,key}.
pki_ca() {
  local dir=$1 name=$2
  [[ -f $dir/ca.crt && -f $dir/ca.key ]] && return 0
  mkdir -p "$dir"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 3650 -subj "/CN=$name" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    2>/dev/null
}

# pki_cert DIR NAME CN ORG USAGE [SAN]: DIR/NAME.{crt,key} signed by DIR/ca. USAGE is client,
# server or both; ORG may be empty; SAN is an openssl subjectAltName list (IP:…,DNS:…).
pki_cert() {
  local dir=$1 name=$2 cn=$3 org=$4 usage=$5 san=${6:-} subj eku ext
  [[ -f $dir/$name.crt && -f $dir/$name.key ]] && return 0
  subj="/CN=$cn"
  [[ -n $org ]] && subj="/O=$org$subj"
  case $usage in
    client) eku=clientAuth ;;
    server) eku=serverAuth ;;
    both) eku=serverAuth,clientAuth ;;
    *) die "pki_cert: usage must be client, server or both" ;;
  esac
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n $san ]] && echo "subjectAltName=$san"
  } >"$ext"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
}

# pki_sa_key DIR: the service-account token signing key pair DIR/sa.{key,pub}.
pki_sa_key() {
  local dir=$1
  [[ -f $dir/sa.key && -f $dir/sa.pub ]] && return 0
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/sa.key" 2>/dev/null
  openssl ec -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE CONTEXT SERVER CA CERT KEY: a self-contained kubeconfig (data embedded).
write_kubeconfig() {
  local file=$1 context=$2 server=$3 ca=$4 cert=$5 key=$6
  umask 077
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $context
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$ca")
users:
- name: $context-$(basename "$cert" .crt)
  user:
    client-certificate-data: $(base64 -w0 "$cert")
    client-key-data: $(base64 -w0 "$key")
contexts:
- name: $context
  context:
    cluster: $context
    user: $context-$(basename "$cert" .crt)
current-context: $context
EOF
  mv "$file.tmp" "$file"
  umask 022
}
