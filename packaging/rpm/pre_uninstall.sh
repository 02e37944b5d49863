# %preun ($1 = 0 on erase, 1 on upgrade): stop and disable on erase only.
if [ "$1" = 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop calllog-bridge.service >/dev/null 2>&1 || :
    fi
    systemctl disable calllog-bridge.service >/dev/null 2>&1 || :
fi
exit 0
