#!/bin/sh
# readyd under valgrind memcheck, for check-valgrind, which writes this file into the
# build with @READYD@ replaced by the daemon's absolute path (the environment does not
# always reach it: systemd-socket-activate passes only LISTEN_*). The integration tests
# start it as READYD_BIN. Any memcheck error, or a definite leak at exit, turns the
# daemon's exit status into 99.
exec valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
	--show-leak-kinds=definite "@READYD@" "$@"
