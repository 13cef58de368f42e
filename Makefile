# readyd: I/O readiness as a service. GNU make, no generator.
#   make          build everything into build/
#   make run      install missing build dependencies, build, run readyd in the foreground
#   make check    install missing build dependencies, build, run every test
#   make CC=clang the same with clang; warnings are errors under both compilers

CC      ?= cc
CFLAGS  ?= -O2 -g
B       := build
SHELL   := /bin/bash
PKGS    := libsystemd jansson
TESTPKGS := cmocka
BUILD_DEBS := build-essential pkg-config libsystemd-dev libjansson-dev libcmocka-dev
# Only the examples of examples-extra, and their test, need these; never `make` or `make run`.
EXAMPLE_DEBS := libseccomp-dev libuv1-dev libevent-dev
TEST_DEBS  := $(BUILD_DEBS) clang libclang-rt-dev man-db groff-base systemd $(EXAMPLE_DEBS)

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-missing-field-initializers
BASE     := -std=gnu11 -D_GNU_SOURCE -Iclient $(WARN)
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_CFLAGS = $(shell pkg-config --cflags cmocka 2>/dev/null)
CMOCKA_LIBS   = $(shell pkg-config --libs cmocka 2>/dev/null)

SOVERSION := 1
VERSION   := 1.0.0

# Where `make install` puts things (GNU names, upper case). DESTDIR is prepended to every
# path and written into none of the installed files. LIBDIR follows the compiler's
# multiarch triplet when it has one (Debian's /usr/lib/x86_64-linux-gnu); the unit and
# sysusers directories are systemd's own, from its pkg-config file, when it is installed.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SBINDIR    ?= $(PREFIX)/sbin
MULTIARCH  := $(shell $(CC) -print-multiarch 2>/dev/null)
LIBDIR     ?= $(PREFIX)/lib$(if $(MULTIARCH),/$(MULTIARCH))
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR     ?= $(PREFIX)/share/man
SD_VAR      = $(shell pkg-config --variable=$(1) systemd 2>/dev/null)
SYSTEMDUNITDIR     ?= $(or $(call SD_VAR,systemdsystemunitdir),$(PREFIX)/lib/systemd/system)
SYSTEMDUSERUNITDIR ?= $(or $(call SD_VAR,systemduserunitdir),$(PREFIX)/lib/systemd/user)
SYSUSERSDIR        ?= $(or $(call SD_VAR,sysusersdir),$(PREFIX)/lib/sysusers.d)

PROTO_SRC  := proto/rdp.c proto/rdp_io.c proto/rdp_path.c
DAEMON_SRC := daemon/main.c daemon/server.c daemon/client.c daemon/registry.c \
              daemon/control.c daemon/config.c daemon/log.c daemon/notify.c daemon/reload.c daemon/upgrade.c daemon/group.c daemon/fault.c
LIB_SRC    := client/readyd.c
CTL_SRC    := client/readyctl.c client/readyctl_top.c

PROTO_OBJ  := $(PROTO_SRC:%.c=$(B)/obj/%.o)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(B)/obj/%.o)
LIB_PIC    := $(LIB_SRC:%.c=$(B)/pic/%.o) $(PROTO_SRC:%.c=$(B)/pic/%.o)
LIB_OBJ    := $(LIB_SRC:%.c=$(B)/obj/%.o)
CTL_OBJ    := $(CTL_SRC:%.c=$(B)/obj/%.o)

BINS := $(B)/bin/readyd $(B)/bin/readyctl
LIBS := $(B)/lib/libreadyd.so.$(VERSION) $(B)/lib/libreadyd.so.$(SOVERSION) $(B)/lib/libreadyd.so \
        $(B)/lib/libreadyd.a
EXAMPLES := $(B)/bin/echo-server $(B)/bin/prefork-server

UNIT_TESTS := $(B)/tests/test-codec $(B)/tests/test-registry
INT_TESTS  := $(B)/tests/test-daemon $(B)/tests/test-hostile $(B)/tests/test-systemd $(B)/tests/test-upgrade \
              $(B)/tests/test-readyctl $(B)/tests/test-recovery $(B)/tests/test-group \
              $(B)/tests/test-limits $(B)/tests/test-prefork $(B)/tests/test-hostile2
TEST_BINS  := $(UNIT_TESTS) $(INT_TESTS)

.PHONY: all deps deps-test run check check-unit check-integration check-lib check-man check-units check-faults check-systemd tests clean \
        install uninstall check-install
all: $(BINS) $(LIBS) $(EXAMPLES)

# Install what the build (deps), the tests (deps-test) or examples-extra (deps-examples)
# need, from Debian, when missing.
deps: DEBS = $(BUILD_DEBS)
deps-test: DEBS = $(TEST_DEBS)
deps-examples: DEBS = $(BUILD_DEBS) $(EXAMPLE_DEBS)
deps deps-test deps-examples deps-fuzz deps-valgrind:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
		else \
			echo "readyd needs these Debian packages:$$missing"; \
			echo "run: sudo apt-get install -y$$missing"; exit 1; \
		fi; \
	fi

run: deps
	@$(MAKE) --no-print-directory all
	exec $(B)/bin/readyd --log-level info

check: deps-test
	@$(MAKE) --no-print-directory all tests
	@$(MAKE) --no-print-directory check-unit check-integration check-lib check-man check-units check-faults check-systemd check-bench check-install check-examples check-fuzz check-soak

tests: $(TEST_BINS) $(B)/tests/soak

check-unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; $$t; done

check-integration: $(INT_TESTS) $(BINS) $(B)/bin/prefork-server $(B)/bin/echo-server
	@set -e; for t in $(INT_TESTS); do echo "== $$t"; READYD_BIN=$(B)/bin/readyd $(call TEST_BIN_ENV,$(B)) $$t; done

# libreadyd.so exports exactly the functions of readyd.h, and links as -lreadyd.
check-lib: $(B)/lib/libreadyd.so
	@want=$$(sed -n 's/^[a-z].* \**\(rd_[a-z_]*\)(.*/\1/p' client/readyd.h | sort); \
	got=$$(nm -D --defined-only $(B)/lib/libreadyd.so | awk '$$2 == "T" { sub(/@.*/, "", $$3); print $$3 }' | sort); \
	if [ "$$want" != "$$got" ]; then echo "exports differ from readyd.h:"; diff <(echo "$$want") <(echo "$$got"); exit 1; fi
	@objdump -p $(B)/lib/libreadyd.so | grep -q 'SONAME *libreadyd.so.$(SOVERSION)$$'
	@mkdir -p $(B)/tests
	$(CC) $(BASE) $(CFLAGS) -o $(B)/tests/link-shared tests/link_shared.c -L$(B)/lib -lreadyd
	LD_LIBRARY_PATH=$(B)/lib $(B)/tests/link-shared
	@echo "libreadyd.so: exports and soname ok"

# make install into a DESTDIR, the echo example built there with pkg-config alone and run
# against the installed readyd, then make uninstall leaving only directories.
check-install: $(BINS) $(LIBS)
	MAKE="$(MAKE)" CC="$(CC)" tests/install.sh $(B)

# Allocation failure at every allocation on the request path: a daemon built with the
# fault-injection hook (daemon/fault.h), driven by tests/test_faults.c.
check-faults: $(B)/tests/test-faults
	@$(MAKE) --no-print-directory B=$(B)/faults CFLAGS="$(CFLAGS) -DRDD_FAULT_INJECTION" $(B)/faults/bin/readyd
	READYD_BIN=$(B)/faults/bin/readyd $(B)/tests/test-faults

# readyd under a real systemd user manager in a private mount namespace (SKIP if the
# machine cannot run one).
check-systemd: $(BINS) $(EXAMPLES) $(B)/tests/load-client
	tests/systemd-user.sh $(B)

# The units verify (with ExecStart pointed at the build), and the system service's
# sandbox scores within the threshold of systemd-analyze security.
check-units: $(B)/bin/readyd
	@set -eo pipefail; t=$$(mktemp -d); trap 'rm -rf $$t' EXIT; mkdir -p $$t/system $$t/user $$t/rt; \
	for u in readyd.socket readyd.service; do \
		sed "s|/usr/sbin/readyd|$(abspath $(B)/bin/readyd)|" systemd/$$u > $$t/system/$$u; \
		sed "s|/usr/sbin/readyd|$(abspath $(B)/bin/readyd)|" systemd/user/$$u > $$t/user/$$u; \
	done; \
	systemd-analyze verify --man=no $$t/system/readyd.socket $$t/system/readyd.service; \
	XDG_RUNTIME_DIR=$$t/rt systemd-analyze --user verify --man=no $$t/user/readyd.socket $$t/user/readyd.service; \
	systemd-analyze security --offline=true --threshold=10 systemd/readyd.service | tail -1
	@echo "units: verified"

# Every page renders without a warning (link pages, which only .so another, excepted).
check-man:
	@set -e; for f in man/*.[1-8]; do \
		head -c3 $$f | grep -q '^\.so' && continue; \
		out=$$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l $$f 2>&1 >/dev/null); \
		if [ -n "$$out" ]; then echo "$$f:"; echo "$$out"; exit 1; fi; \
	done; echo "man pages: no warnings"

# make install [PREFIX=/usr] [DESTDIR=/tmp/stage] [BINDIR=...] ...: the binaries, the
# library (the versioned file, its soname link and its link-time name), the header,
# readyd.pc, every man page (link pages as symlinks), the units with ExecStart at SBINDIR,
# and the sysusers entry. make uninstall removes those files and nothing else; the
# directories stay, as other packages may share them.
INSTALL   ?= install
MAN_PAGES := $(wildcard man/*.[1-8])
MAN_SECTIONS := $(sort $(subst .,,$(suffix $(MAN_PAGES))))
man_path   = $(MANDIR)/man$(subst .,,$(suffix $(1)))/$(notdir $(1))
INSTALLED  = $(BINDIR)/readyctl $(SBINDIR)/readyd \
             $(LIBDIR)/libreadyd.so.$(VERSION) $(LIBDIR)/libreadyd.so.$(SOVERSION) \
             $(LIBDIR)/libreadyd.so $(LIBDIR)/libreadyd.a $(PKGCONFIGDIR)/readyd.pc \
             $(INCLUDEDIR)/readyd.h $(foreach m,$(MAN_PAGES),$(call man_path,$(m))) \
             $(SYSTEMDUNITDIR)/readyd.socket $(SYSTEMDUNITDIR)/readyd.service \
             $(SYSTEMDUSERUNITDIR)/readyd.socket $(SYSTEMDUSERUNITDIR)/readyd.service \
             $(SYSUSERSDIR)/readyd.conf
# Run ldconfig after a real (not staged) install or uninstall by root.
LDCONFIG   = if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

install: $(BINS) $(LIBS)
	@mkdir -p $(B)/gen/user
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))|' \
	    -e 's|@INCLUDEDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))|' \
	    -e 's|@VERSION@|$(VERSION)|' client/readyd.pc.in > $(B)/gen/readyd.pc
	for u in readyd.service user/readyd.service; do \
		sed 's|^ExecStart=/usr/sbin/readyd|ExecStart=$(SBINDIR)/readyd|' systemd/$$u > $(B)/gen/$$u || exit 1; \
	done
	$(INSTALL) -d $(addprefix $(DESTDIR),$(BINDIR) $(SBINDIR) $(LIBDIR) $(PKGCONFIGDIR) \
		$(INCLUDEDIR) $(addprefix $(MANDIR)/man,$(MAN_SECTIONS)) \
		$(SYSTEMDUNITDIR) $(SYSTEMDUSERUNITDIR) $(SYSUSERSDIR))
	$(INSTALL) -m 0755 $(B)/bin/readyctl $(DESTDIR)$(BINDIR)/readyctl
	$(INSTALL) -m 0755 $(B)/bin/readyd $(DESTDIR)$(SBINDIR)/readyd
	$(INSTALL) -m 0644 $(B)/lib/libreadyd.so.$(VERSION) $(B)/lib/libreadyd.a $(DESTDIR)$(LIBDIR)/
	ln -sfn libreadyd.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libreadyd.so.$(SOVERSION)
	ln -sfn libreadyd.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libreadyd.so
	$(INSTALL) -m 0644 $(B)/gen/readyd.pc $(DESTDIR)$(PKGCONFIGDIR)/readyd.pc
	$(INSTALL) -m 0644 client/readyd.h $(DESTDIR)$(INCLUDEDIR)/readyd.h
	@# A link page (a symbolic link in man/) goes in as one, as Debian policy and mandoc prefer.
	for m in $(MAN_PAGES); do \
		s=$${m##*.}; \
		if [ -L $$m ]; then \
			ln -sfn $$(readlink $$m) $(DESTDIR)$(MANDIR)/man$$s/$${m##*/}; \
		else \
			$(INSTALL) -m 0644 $$m $(DESTDIR)$(MANDIR)/man$$s/; \
		fi || exit 1; \
	done
	$(INSTALL) -m 0644 $(B)/gen/readyd.service systemd/readyd.socket $(DESTDIR)$(SYSTEMDUNITDIR)/
	$(INSTALL) -m 0644 $(B)/gen/user/readyd.service systemd/user/readyd.socket $(DESTDIR)$(SYSTEMDUSERUNITDIR)/
	$(INSTALL) -m 0644 systemd/readyd.sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/readyd.conf
	@$(LDCONFIG)

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	@$(LDCONFIG)

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASE) $(PKG_CFLAGS) $(CMOCKA_CFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASE) -fPIC $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/bin/readyd: $(DAEMON_OBJ) $(PROTO_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# The file is named for the full version; the soname and the link-time name are links.
$(B)/lib/libreadyd.so.$(VERSION): $(LIB_PIC) client/libreadyd.map
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -shared -Wl,-soname,libreadyd.so.$(SOVERSION) \
		-Wl,--version-script=client/libreadyd.map -o $@ $(LIB_PIC)

$(B)/lib/libreadyd.so.$(SOVERSION): $(B)/lib/libreadyd.so.$(VERSION)
	ln -sfn libreadyd.so.$(VERSION) $@

$(B)/lib/libreadyd.so: $(B)/lib/libreadyd.so.$(SOVERSION)
	ln -sfn libreadyd.so.$(SOVERSION) $@

$(B)/lib/libreadyd.a: $(LIB_OBJ) $(PROTO_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(B)/bin/readyctl: $(CTL_OBJ) $(B)/lib/libreadyd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(CTL_OBJ) $(B)/lib/libreadyd.a $(PKG_LIBS)

$(B)/bin/%: $(B)/obj/examples/%.o $(B)/lib/libreadyd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^

# Examples that need a library besides libreadyd, each named by its pkg-config module. Not
# in `all`: make examples-extra installs their packages when missing (as make run does)
# and builds them.
EXTRA_EXAMPLES := $(B)/bin/sandboxed-worker $(B)/bin/libuv-client $(B)/bin/libevent-client
$(B)/bin/sandboxed-worker $(B)/obj/examples/sandboxed-worker.o: EXAMPLE_PKG := libseccomp
# The event-loop examples share their workload.
$(B)/bin/libuv-client $(B)/bin/libevent-client: $(B)/obj/examples/pairgame.o
$(B)/bin/libuv-client $(B)/obj/examples/libuv-client.o: EXAMPLE_PKG := libuv
$(B)/bin/libevent-client $(B)/obj/examples/libevent-client.o: EXAMPLE_PKG := libevent
$(EXTRA_EXAMPLES:$(B)/bin/%=$(B)/obj/examples/%.o): PKG_CFLAGS = $(shell pkg-config --cflags $(EXAMPLE_PKG))
$(EXTRA_EXAMPLES): $(B)/bin/%: $(B)/obj/examples/%.o $(B)/lib/libreadyd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(filter %.o,$^) $(filter %.a,$^) $(shell pkg-config --libs $(EXAMPLE_PKG))

.PHONY: deps-examples examples-extra
examples-extra: deps-examples
	@$(MAKE) --no-print-directory $(EXTRA_EXAMPLES)

# The sandboxed worker (filter in force, still serving, also under --strict) and both
# event-loop clients against a real readyd, which ends at its idle fd count.
.PHONY: check-examples
check-examples: deps-examples
	@$(MAKE) --no-print-directory $(BINS) $(EXTRA_EXAMPLES)
	tests/examples.sh $(B)

# Soak (issue 6): 200 clients churning add, delete, modify and re-arm under an oracle
# (no lost wakeup, no event after a delete, events follow the interest, oneshot silent
# until re-armed), then connect/HELLO/close cycles; the daemon's fd count and RSS flat,
# and exit 0 on SIGTERM. check-soak runs CHECK_SOAK_SECONDS of it, 0 to skip (CI runs
# its own 60-second soak as a separate step).
SOAK_SECONDS ?= 60
CHECK_SOAK_SECONDS ?= 20
.PHONY: soak check-soak
$(B)/tests/soak: $(B)/obj/tests/soak.o $(B)/obj/tests/harness.o $(B)/obj/tests/fdcheck.o $(B)/lib/libreadyd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -pthread -o $@ $^ $(CMOCKA_LIBS)

soak: $(B)/tests/soak $(B)/bin/readyd
	READYD_BIN=$(B)/bin/readyd $(B)/tests/soak $(SOAK_SECONDS)

check-soak:
	@if [ "$(CHECK_SOAK_SECONDS)" != 0 ]; then \
		$(MAKE) --no-print-directory soak SOAK_SECONDS=$(CHECK_SOAK_SECONDS); fi

# The load driver of tests/systemd-user.sh.
$(B)/tests/load-client: $(B)/obj/tests/load_client.o $(B)/lib/libreadyd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^

# Unit tests link the pure modules directly.
$(B)/tests/test-codec: $(B)/obj/tests/test_codec.o $(B)/obj/tests/fdcheck.o $(PROTO_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS)

$(B)/tests/test-registry: $(B)/obj/tests/test_registry.o $(B)/obj/tests/fdcheck.o $(B)/obj/daemon/registry.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS)

# Integration tests drive a real readyd through the library and through raw frames.
$(B)/tests/test-%: $(B)/obj/tests/test_%.o $(B)/obj/tests/harness.o $(B)/obj/tests/fdcheck.o \
		$(B)/obj/tests/bystander.o $(B)/lib/libreadyd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(PKG_LIBS)

# Benchmarks (bench/README.md): readyd against its floor, in one run; never in timed
# tests. check-bench is a one-second smoke run: it asserts the benchmark works, not speed.
BENCH_SRC := bench/readyd-bench.c bench/proc.c bench/relay.c bench/notify.c \
             bench/throughput.c bench/handoff.c bench/footprint.c bench/accept.c
BENCH_OBJ := $(BENCH_SRC:%.c=$(B)/obj/%.o)
BENCH_RUN  = $(B)/bin/readyd-bench --readyd $(B)/bin/readyd

.PHONY: bench bench-quick bench-plot check-bench
$(B)/bin/readyd-bench: $(BENCH_OBJ) $(B)/lib/libreadyd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ -lm

bench: $(B)/bin/readyd-bench $(B)/bin/readyd
	$(BENCH_RUN)

bench-quick: $(B)/bin/readyd-bench $(B)/bin/readyd
	$(BENCH_RUN) --quick

check-bench: $(B)/bin/readyd-bench $(B)/bin/readyd
	$(BENCH_RUN) --smoke

# The notify latency distribution, readyd against the relay against direct epoll.
bench-plot: $(B)/bin/readyd-bench $(B)/bin/readyd
	@command -v gnuplot >/dev/null || { [ "$$(id -u)" = 0 ] && \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null; } || \
		{ echo "bench-plot needs gnuplot: sudo apt-get install -y gnuplot-nox"; exit 1; }
	@mkdir -p $(B)/bench
	$(BENCH_RUN) --only notify --plot-data $(B)/bench/notify-latency.dat
	gnuplot -e "data='$(B)/bench/notify-latency.dat'; out='bench/notify-latency.png'" bench/notify-latency.gp
	@echo "wrote bench/notify-latency.png"

# ---- Fuzzing (tests/fuzz/README.md). libFuzzer harnesses, built by clang with ASan and
# UBSan into $(FUZZ_B): the codec, the daemon's request handling over a real connection,
# and the config parser. make fuzz runs each for FUZZ_SECONDS; check-fuzz (part of check)
# replays the seed corpus and fuzzes FUZZ_SHORT seconds each. The same harnesses build
# with any compiler as replay-* (a plain main over corpus files), for check-asan.
FUZZ_DEBS    := clang libclang-rt-dev
FUZZ_B       := $(B)-fuzz
FUZZ_SECONDS ?= 60
FUZZ_SHORT   ?= 10
FUZZ_NAMES   := codec daemon config
FUZZ_CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
                -fno-sanitize-recover=all
FUZZ_BINS     = $(FUZZ_NAMES:%=$(B)/tests/fuzz-%)
REPLAY_BINS   = $(FUZZ_NAMES:%=$(B)/tests/replay-%)
FUZZ_DAEMON_OBJ = $(filter-out $(B)/obj/daemon/main.o,$(DAEMON_OBJ))
FUZZ_MAKE     = $(MAKE) --no-print-directory B=$(FUZZ_B) CC=clang CFLAGS='$(FUZZ_CFLAGS)' LDFLAGS=

.PHONY: deps-fuzz fuzz-build fuzz check-fuzz fuzz-corpus
tests: $(REPLAY_BINS) $(B)/tests/fuzz-corpus-gen

$(B)/tests/fuzz-codec $(B)/tests/replay-codec: $(B)/obj/tests/fuzz/fuzz_codec.o $(PROTO_OBJ)
$(B)/tests/fuzz-daemon $(B)/tests/replay-daemon: $(B)/obj/tests/fuzz/fuzz_daemon.o $(FUZZ_DAEMON_OBJ) $(PROTO_OBJ)
$(B)/tests/fuzz-config $(B)/tests/replay-config: $(B)/obj/tests/fuzz/fuzz_config.o $(FUZZ_DAEMON_OBJ) $(PROTO_OBJ)
$(FUZZ_BINS):
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(PKG_LIBS)
$(REPLAY_BINS): $(B)/obj/tests/fuzz/replay.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# The seed corpus is generated, and checked in: make fuzz-corpus writes it again.
$(B)/tests/fuzz-corpus-gen: $(B)/obj/tests/fuzz/corpus_gen.o $(B)/obj/proto/rdp.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^

fuzz-corpus: $(B)/tests/fuzz-corpus-gen
	rm -rf tests/fuzz/corpus
	$(B)/tests/fuzz-corpus-gen tests/fuzz/corpus

deps-fuzz: DEBS = $(FUZZ_DEBS)

fuzz-build: deps-fuzz
	@$(FUZZ_MAKE) $(FUZZ_NAMES:%=$(FUZZ_B)/tests/fuzz-%)

# make fuzz [FUZZ_SECONDS=N]: the corpus grows in $(FUZZ_B)/fuzz/<harness>/corpus, from
# one run to the next; a crash is kept in $(FUZZ_B)/fuzz/<harness>/crashes.
fuzz: fuzz-build
	@set -e; for h in $(FUZZ_NAMES); do \
		tests/fuzz/run.sh $(FUZZ_B)/tests/fuzz-$$h tests/fuzz/corpus/$$h $(FUZZ_B)/fuzz/$$h $(FUZZ_SECONDS); \
	done

check-fuzz: fuzz-build
	@set -e; for h in $(FUZZ_NAMES); do \
		rm -rf $(FUZZ_B)/check/$$h; \
		tests/fuzz/run.sh $(FUZZ_B)/tests/fuzz-$$h tests/fuzz/corpus/$$h $(FUZZ_B)/check/$$h $(FUZZ_SHORT); \
	done

# ---- Sanitizers. check-asan builds the whole tree with ASan and UBSan ($(CC): gcc by
# default, CC=clang for clang's stricter UBSan) into $(ASAN_B),
# runs the unit, integration and allocation-failure tests there (the daemon and programs
# they start are that build's too), then replays the fuzz corpus with the replay-*
# harnesses. check-valgrind runs the integration tests with the daemon under memcheck
# (tests/valgrind-readyd.sh): an error or a definite leak makes it exit 99, which fails
# the test that stops it. The fd-count checks stay on (they compare counts taken after
# the daemon started; valgrind's own fds do not change). Skipped: the test that needs the daemon's fd table to end at RLIMIT_NOFILE,
# where valgrind keeps fds of its own, and the live-upgrade tests (*upgrade*), whose
# upgraded daemon is the binary itself, no longer under valgrind.
ASAN_B     := $(B)-asan
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
ASAN_ENV   := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
              UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
ASAN_MAKE   = $(MAKE) --no-print-directory B=$(ASAN_B) CFLAGS='$(ASAN_FLAGS)' \
              LDFLAGS='-fsanitize=address,undefined'

# The other programs the tests run, from build directory $(1).
TEST_BIN_ENV = READYCTL_BIN=$(1)/bin/readyctl ECHO_BIN=$(1)/bin/echo-server PREFORK_BIN=$(1)/bin/prefork-server

.PHONY: check-asan check-valgrind deps-valgrind
deps-valgrind: DEBS = valgrind

check-asan: deps-test
	@$(ASAN_MAKE) all tests
	@$(ASAN_ENV) $(call TEST_BIN_ENV,$(ASAN_B)) $(ASAN_MAKE) check-unit check-integration check-faults
	@set -e; for h in $(FUZZ_NAMES); do $(ASAN_ENV) $(ASAN_B)/tests/replay-$$h tests/fuzz/corpus/$$h; done
	@echo "check-asan: ok"

check-valgrind: deps-valgrind $(INT_TESTS) $(BINS) $(EXAMPLES) $(B)/bin/prefork-server $(B)/tests/readyd-valgrind
	@set -e; for t in $(INT_TESTS); do echo "== $$t (readyd under valgrind)"; \
		case $$t in */test-hostile) skip=test_ctrunc_when_daemon_out_of_fd_slots;; *) skip='*upgrade*';; esac; \
		READYD_BIN=$(B)/tests/readyd-valgrind $(call TEST_BIN_ENV,$(B)) READYD_TEST_SKIP="$$skip" $$t; done
	@echo "check-valgrind: ok"

$(B)/tests/readyd-valgrind: tests/valgrind-readyd.sh
	@mkdir -p $(dir $@)
	sed 's|@READYD@|$(abspath $(B)/bin/readyd)|' $< > $@
	chmod +x $@

clean:
	rm -rf $(B)

.SECONDARY:

-include $(shell find $(B) -name '*.d' 2>/dev/null)
