# Source on the GPU machine (Ubuntu, no package access) to build kvtier
# there: unpacks the Debian .debs carried in .deps/ (fetched here with
# `apt-get download`, see bench/RESULTS.md) into /opt/dep -- never into / --
# and points pkg-config, the linker and the loader at them.
#   . tools/device_env.sh && cmake -S . -B build-gpu && make -C build-gpu -j16
DEP=/opt/dep
# Each .deb once (a stamp per file), so debs added later land on a machine
# that is already warm.
mkdir -p "$DEP/.stamps"
for f in .deps/*.deb; do
  stamp=$DEP/.stamps/$(basename "$f")
  [ -e "$stamp" ] || { dpkg -x "$f" "$DEP" && touch "$stamp"; }
done
LIB=$DEP/usr/lib/x86_64-linux-gnu
# libmicrohttpd.pc names gnutls in Requires.private, which pkg-config wants
# to see even for a shared link; the machine has the gnutls runtime
# (libgnutls.so.30) but no .pc: a stub with no flags satisfies the check.
if [ ! -e "$LIB/pkgconfig/gnutls.pc" ]; then
  printf 'Name: gnutls\nDescription: stub for a shared link\nVersion: 3.8\n' \
    > "$LIB/pkgconfig/gnutls.pc"
fi
export PKG_CONFIG_LIBDIR=$LIB/pkgconfig:$DEP/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$DEP
export LD_LIBRARY_PATH=$LIB:$LIB/ucx${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LDFLAGS="-Wl,-rpath-link,$LIB:$LIB/ucx"
export PATH=$DEP/usr/bin:$PATH
