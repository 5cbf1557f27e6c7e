#!/bin/sh
# /init of the lab's real guests (tests/lab/guestimage.py): busybox only. Mode `run` pets the i6300esb watchdog
# every second; commands on ttyS1 (one a line): run, watchdog (stop petting), panic (kernel panic: pvpanic tells
# the hypervisor). Every line it prints goes to ttyS0, the domain's console log.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in watchdog i6300esb pvpanic pvpanic-mmio; do
    case $m in i6300esb) args="heartbeat=5" ;; *) args="" ;; esac
    insmod /lib/modules/$m.ko $args || echo "crashup-guest: insmod $m failed"
done
sysctl -qw kernel.panic_on_oops=1 kernel.panic=0 kernel.softlockup_panic=1 kernel.hung_task_panic=1
echo run > /tmp/mode
stty -F /dev/ttyS1 raw -echo 2>/dev/null
(
    while read -r cmd; do
        case $cmd in
            run|watchdog) echo "$cmd" > /tmp/mode; echo "crashup-guest: mode $cmd" ;;
            panic) echo "crashup-guest: panic"; echo c > /proc/sysrq-trigger ;;
            "") ;;
            *) echo "crashup-guest: unknown command $cmd" ;;
        esac
    done < /dev/ttyS1
) &
if [ -e /dev/watchdog ]; then exec 3>/dev/watchdog; else echo "crashup-guest: no /dev/watchdog"; exec 3>/dev/null; fi
echo "crashup-guest: ready"
while :; do
    [ "$(cat /tmp/mode)" = run ] && echo -n . >&3
    sleep 1
done
