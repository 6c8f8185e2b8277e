# apt.sh - the private apt root of a guest architecture, shared by run-guest.sh
# and build-ext.sh (sourced; needs APTD, SOURCES, DEBARCH and die()).  Nothing of
# the guest's architecture is installed on the host: apt works in $APTD only.
# APT_SUITE (optional, e.g. trixie-backports): the root lists that one suite only, from the
# host's main-archive entry (same mirror and keyring) -- keep each suite in its own $APTD.
setup_apt() {
  mkdir -p "$APTD"/{lists/partial,archives/partial,etc/sources.list.d,etc/preferences.d}
  # the host's own Debian archive entries, restricted to the guest's (same mirror the host uses)
  [ -r "$SOURCES" ] || die "no apt sources at $SOURCES (set ARM64KVM_SOURCES)"
  # ppc64el needs nothing from bookworm-security (the 6.1 kernel is bookworm's own),
  # whose ppc64el index has been seen mid-sync (a size mismatch fails apt-get update)
  local skip=NONE; [ "$DEBARCH" = ppc64el ] && skip=debian-security
  if [ -n "${APT_SUITE:-}" ]; then
    awk -v suite="$APT_SUITE" 'BEGIN{RS="";ORS="\n\n"} /Types:[ \t]*deb/ && /Suites:.*bookworm/ && index($0, "debian-security") == 0 && !done {
        sub(/\n*$/,""); gsub(/\nSuites:[^\n]*/, "\nSuites: " suite); print $0 "\nArchitectures: '"$DEBARCH"'"; done=1}' \
      "$SOURCES" > "$APTD/etc/sources.list.d/debian.sources.new"
  else
    awk -v skip="$skip" 'BEGIN{RS="";ORS="\n\n"} /Types:[ \t]*deb/ && /Suites:.*bookworm/ && index($0, skip) == 0 {sub(/\n*$/,""); print $0 "\nArchitectures: '"$DEBARCH"'"}' \
      "$SOURCES" > "$APTD/etc/sources.list.d/debian.sources.new"
  fi
  grep -q '^URIs:' "$APTD/etc/sources.list.d/debian.sources.new" || die "no bookworm entries in $SOURCES"
  mv "$APTD/etc/sources.list.d/debian.sources.new" "$APTD/etc/sources.list.d/debian.sources"
  [ -e "$APTD/etc/sources.list" ] || : > "$APTD/etc/sources.list"
  touch "$APTD/status"
  APT_OPTS=(-o APT::Architecture="$DEBARCH" -o APT::Architectures::="$DEBARCH"
    -o Dir::State="$APTD" -o Dir::State::status="$APTD/status" -o Dir::State::Lists="$APTD/lists"
    -o Dir::Cache="$APTD" -o Dir::Cache::Archives="$APTD/archives"
    -o Dir::Etc::SourceList="$APTD/etc/sources.list" -o Dir::Etc::SourceParts="$APTD/etc/sources.list.d"
    -o Dir::Etc::Preferences="$APTD/etc/preferences" -o Dir::Etc::PreferencesParts="$APTD/etc/preferences.d"
    -o APT::Sandbox::User=root)
}
aptq() { apt-get "${APT_OPTS[@]}" "$@"; }
acq() { apt-cache "${APT_OPTS[@]}" "$@"; }
