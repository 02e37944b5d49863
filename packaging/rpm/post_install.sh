# %post ($1 = 1 on install, 2 on upgrade): fix ownership, enable the unit
# on a fresh install (not started: configure it first), restart a running
# bridge on upgrade (it drains and checkpoints on SIGTERM).
mkdir -p /etc/calllog-bridge /var/lib/calllog-bridge
chown root:calllog-bridge /etc/calllog-bridge
chmod 0750 /etc/calllog-bridge
if [ -f /etc/calllog-bridge/config.toml ]; then
    chown root:calllog-bridge /etc/calllog-bridge/config.toml
    chmod 0640 /etc/calllog-bridge/config.toml
fi
chown calllog-bridge:calllog-bridge /var/lib/calllog-bridge
chmod 0750 /var/lib/calllog-bridge
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" = 1 ]; then
    systemctl enable calllog-bridge.service >/dev/null 2>&1 || :
elif [ -d /run/systemd/system ]; then
    systemctl try-restart calllog-bridge.service >/dev/null 2>&1 || :
fi
exit 0
