# %pre: create the system user before the files are laid down, so the
# config can be installed group-owned by it.
getent group calllog-bridge >/dev/null || groupadd --system calllog-bridge
getent passwd calllog-bridge >/dev/null || \
    useradd --system --gid calllog-bridge --home-dir /var/lib/calllog-bridge --no-create-home \
        --shell /sbin/nologin --comment "calllog-bridge service" calllog-bridge
exit 0
