#!/bin/sh
# Run by the `script` task of tests/ansible/main.yml on the busybox VM:
# Ansible copies it into the guest's temporary directory and runs it there.
echo "script-ok $1"
uname -s
