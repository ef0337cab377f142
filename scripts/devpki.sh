#!/usr/bin/env bash
# devpki.sh: make a development PKI with `tunnel cert`: a CA, one server
# certificate and client certificates. For development and tests only;
# production certificates come from a real CA (step-ca, Vault PKI,
# cert-manager, an enterprise CA).
#
#   scripts/devpki.sh [-d DIR] [-s SERVER_NAME] [-i IP]... [-n DNS]... [-f] [CLIENT...]
#
#   -d DIR          where to write (default: ./pki)
#   -s SERVER_NAME  server certificate name, CN and DNS SAN (default: tunnel.example.com)
#   -i IP           IP SAN of the server certificate (repeatable; default: 127.0.0.1 and ::1)
#   -n DNS          extra DNS SAN of the server certificate (repeatable; default: localhost)
#   -f              overwrite existing files (otherwise existing ones are kept)
#   CLIENT...       client certificate names (default: app1)
#
# The tunnel binary is $TUNNEL if set, else bin/tunnel (built if missing).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir=pki
server=tunnel.example.com
ips=()
dnss=()
force=()

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while getopts 'd:s:i:n:fh' opt; do
	case $opt in
	d) dir=$OPTARG ;;
	s) server=$OPTARG ;;
	i) ips+=("$OPTARG") ;;
	n) dnss+=("$OPTARG") ;;
	f) force=(--force) ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
clients=("$@")
[[ ${#ips[@]} -gt 0 ]] || ips=(127.0.0.1 ::1)
[[ ${#dnss[@]} -gt 0 ]] || dnss=(localhost)
[[ ${#clients[@]} -gt 0 ]] || clients=(app1)

tunnel=${TUNNEL:-}
if [[ -z $tunnel ]]; then
	tunnel="$root/bin/tunnel"
	if [[ ! -x $tunnel ]]; then
		echo "building $tunnel" >&2
		(cd "$root" && go build -o bin/tunnel ./cmd/tunnel)
	fi
fi

# exists FILE: true when FILE is there and -f was not given, so it is kept.
exists() {
	if [[ -e $1 && ${#force[@]} -eq 0 ]]; then
		echo "keeping $1 (use -f to overwrite)"
		return 0
	fi
	return 1
}

exists "$dir/ca.pem" || "$tunnel" cert init "$dir" "${force[@]}"

san=()
for ip in "${ips[@]}"; do san+=(--ip "$ip"); done
for d in "${dnss[@]}"; do san+=(--dns "$d"); done
exists "$dir/$server.pem" || "$tunnel" cert issue "$dir" --server "$server" "${san[@]}" "${force[@]}"

for c in "${clients[@]}"; do
	exists "$dir/$c.pem" || "$tunnel" cert issue "$dir" --client "$c" "${force[@]}"
done

cat <<MSG

Development PKI in $dir (keys are 0600; never commit them):
  CA      $dir/ca.pem
  server  $dir/$server.pem  $dir/$server-key.pem
MSG
for c in "${clients[@]}"; do
	echo "  client  $dir/$c.pem  $dir/$c-key.pem"
done
