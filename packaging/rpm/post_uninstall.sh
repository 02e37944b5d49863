# %postun ($1 = 0 on erase): forget the unit. State in /var/lib/calllog-bridge
# and the user are kept (remove them by hand if the bridge is gone for good).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
