#!/usr/bin/env bash
# Makes the manual pages h2rev-dialer.1, h2rev-listener.1 and h2rev-connect.1
# from the tools' --help (the one place where their flags are described), so that the two
# cannot drift apart: e2e-install fails when a committed page is not what
# this script makes from the built tools.
#   bash dist/man/gen.sh [BINDIR [OUTDIR]]   (default: build/bin, dist/man)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-$HERE/../../build/bin}
OUT=${2:-$HERE}

DAEMON_ENV='.TP\n.B H2REV_TOKEN\nThe token, when neither \\fB\\-\\-token\\fR nor \\fB\\-\\-token\\-file\\fR is given.\n'
DAEMON_EXIT='0 after a drain (SIGINT, SIGTERM); 2 for a bad flag or a file that cannot be read; 1 otherwise.'

# page TOOL SUMMARY DESCRIPTION SEE-ALSO [ENVIRONMENT (roff, "" for none) EXIT-STATUS]
page() {
  local tool=$1 summary=$2 description=$3 see=$4 env=${5-$DAEMON_ENV} exits=${6-$DAEMON_EXIT} version help
  version=$("$BIN/$tool" --version | awk '{print $2}')
  # Read whole, once: `--help | head -n 1` kills the tool with SIGPIPE (a
  # failure under pipefail) once its text is longer than one stdio buffer.
  help=$("$BIN/$tool" --help)
  {
    printf '.\\" Made by dist/man/gen.sh from %s --help: edit the tool, then run it.\n' "$tool"
    printf '.TH %s 1 "" "h2rev %s" "User Commands"\n' "$(tr 'a-z' 'A-Z' <<< "$tool")" "$version"
    printf '.SH NAME\n%s \\- %s\n' "$tool" "$summary"
    sed -n 1p <<< "$help" | sed 's/^usage: //; s/-/\\-/g' |
      awk '{ w = $1; $1 = ""; sub(/^ /, ""); printf ".SH SYNOPSIS\n.B %s\n%s\n", w, $0 }'
    printf '.SH DESCRIPTION\n%s\n.SH OPTIONS\n' "$description"
    tail -n +2 <<< "$help" | awk '
      function esc(s) { gsub(/\\/, "\\e", s); gsub(/-/, "\\-", s); sub(/^[.'"'"']/, "\\\\&&", s); return s }
      /^  -/ {
        line = substr($0, 3)
        # The flag and its value, then (after two spaces or more) the text.
        if (match(line, /  +/)) { flag = substr(line, 1, RSTART - 1); text = substr(line, RSTART + RLENGTH) }
        else { flag = line; text = "" }
        printf ".TP\n.B %s\n", esc(flag)
        if (text != "") print esc(text)
        next
      }
      /^    / { sub(/^ +/, ""); print esc($0); next }
      { if (!tail) { print ".SH NOTES"; tail = 1 } print esc($0) }
    '
    [ -z "$env" ] || printf ".SH ENVIRONMENT\n$env"
    printf '.SH EXIT STATUS\n%s\n' "$exits"
    printf '.SH SEE ALSO\n%s\n' "$see"
  } > "$OUT/$tool.1"
}

page h2rev-dialer "the public end of reverse HTTP/2 connections" \
  "Serves \\fIBASE\\fR/revdial for h2rev listeners behind NATs to attach (one HTTP/2
connection each) and \\fIBASE\\fR/proxy/\\fIID\\fR/\\fIPATH\\fR, which it proxies to
\\fIPATH\\fR behind the listener attached as \\fIID\\fR, over HTTP/2 or HTTP/1.1
(WebSocket included). It logs to standard error. The systemd unit
h2rev-dialer.service runs it with the flags of /etc/h2rev/dialer.env." \
  ".BR h2rev-listener (1),
.BR systemctl (1)"
page h2rev-listener "attaches to an h2rev dialer and proxies its reverse connections to an upstream" \
  "Connects out to the dialer at \\fB\\-\\-url\\fR as \\fB\\-\\-id\\fR over one HTTP/2
connection and serves every reverse connection the dialer opens from the
\\fB\\-\\-upstream\\fR server; reconnects by itself, with backoff. It logs to
standard error. The systemd unit h2rev-listener.service runs it with the
flags of /etc/h2rev/listener.env." \
  ".BR h2rev-dialer (1),
.BR systemctl (1)"
page h2rev-connect "a byte stream to a TCP service behind an h2rev listener" \
  "Opens a tunnel through the h2rev dialer at \\fIURL\\fR (HTTP/1.1 CONNECT
\\fIBASE\\fR/proxy/\\fIID\\fR, over TLS for https://) to the TCP service
behind the listener attached as \\fIID\\fR (one with \\-\\-upstream tcp://),
and passes standard input and output through it: made for ssh's
ProxyCommand. The end of the input half-closes the tunnel; it ends when the
service ends its side. With \\fB\\-\\-listen\\fR, each connection accepted
on a local port gets a tunnel of its own, in a process of its own." \
  ".BR h2rev-dialer (1),
.BR h2rev-listener (1),
.BR ssh_config (5)" "" \
  "0 when the tunnel ended (the service closed it); 2 for bad usage; 1 for any error (a refused CONNECT, a certificate that does not verify), with one line on standard error."
