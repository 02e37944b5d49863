# %postun ($1 = 0 on erase): forget the unit. RPM has no purge: the state in
# /var/lib/calllog-bridge (the service user's home) and the user are kept,
# and the commands to remove them when the bridge is gone for good are said.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" = 0 ]; then
    echo "calllog-bridge: kept the state in /var/lib/calllog-bridge and the system user calllog-bridge; to remove both: rm -rf /var/lib/calllog-bridge && userdel calllog-bridge && groupdel calllog-bridge" >&2
fi
exit 0
