#!/bin/sh
# A private CA, a cloud (server) certificate and an edge (client) certificate for the gRPC hop.
#
#   deploy/tools/make-certs.sh OUT_DIR [SERVER_SANS] [DAYS]
#
# SERVER_SANS lists every name the edge dials the cloud by (default: DNS:localhost,IP:127.0.0.1),
# e.g. "DNS:cloud,DNS:draftlink-cloud,DNS:draftlink-cloud.default.svc". Writes OUT_DIR/ca.crt,
# ca.key (keep it offline), cloud.crt, cloud.key, edge.crt, edge.key. Keys are P-256, unencrypted
# (gRPC cannot read encrypted keys), mode 0600: make them readable by the containers' uid 10001.
set -eu
out=${1:?usage: make-certs.sh OUT_DIR [SERVER_SANS] [DAYS]}
sans=${2:-DNS:localhost,IP:127.0.0.1}
days=${3:-365}
mkdir -p "$out"
cd "$out"
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=draftlink CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.crt 2>/dev/null

# issue NAME COMMON_NAME EXTENSIONS: a key and a certificate signed by the CA above
issue() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
        -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

issue cloud draftlink-cloud "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$sans"

issue edge draftlink-edge "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

chmod 644 ca.crt cloud.crt edge.crt
echo "wrote $out: ca.crt ca.key cloud.crt cloud.key edge.crt edge.key (cloud SANs: $sans)"
