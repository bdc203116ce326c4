# slurm-vm: build, install and package what a cluster runs.
#   make                      release binaries (Swift runtime linked in) and the SPANK plugin
#   make install              lays them out under $(DESTDIR)$(PREFIX) and $(DESTDIR)$(SYSCONFDIR)
#   make deb                  the Debian package of that same layout (dist/slurm-vm_VERSION_amd64.deb)
# PREFIX=/usr/local by default; the package uses /usr. Tests: scripts/test.sh (README).
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR ?=
BINDIR = $(PREFIX)/bin
SBINDIR = $(PREFIX)/sbin
DATADIR = $(PREFIX)/share/slurm-vm
DOCDIR = $(PREFIX)/share/doc/slurm-vm
UNITDIR = $(PREFIX)/lib/systemd/system
RELEASE = .build/release
# The CLI and the daemon carry the Swift runtime, so a node needs no toolchain; the VMM is a static
# executable by its own link flags (Package.swift). STRIP=-s strips the binaries as they are installed.
SWIFT_BUILD = swift build -c release --static-swift-stdlib
STRIP ?=

all: build

build:
	$(SWIFT_BUILD) --product slurm-vm
	$(SWIFT_BUILD) --product slurm-vmd
	swift build -c release --product slurm-vm-vmm
	$(MAKE) -C Plugin

# Installs what `make` built (it does not build: run it first, as the user who owns the tree).
install:
	@for f in slurm-vm slurm-vmd slurm-vm-vmm; do test -x $(RELEASE)/$$f || { echo "make install: $(RELEASE)/$$f is missing; run make first" >&2; exit 1; }; done
	install -D -m 0755 $(STRIP) $(RELEASE)/slurm-vm $(DESTDIR)$(BINDIR)/slurm-vm
	install -D -m 0755 $(STRIP) $(RELEASE)/slurm-vm-vmm $(DESTDIR)$(BINDIR)/slurm-vm-vmm
	install -D -m 0755 $(STRIP) $(RELEASE)/slurm-vmd $(DESTDIR)$(SBINDIR)/slurm-vmd
	$(MAKE) -C Plugin install DESTDIR=$(abspath $(DESTDIR)) PLUGSTACK_DIR=$(SYSCONFDIR)/slurm/plugstack.conf.d \
	    PLUGSTACK_ARGS="submit_socket=/run/slurm-vm/slurm-vmd.sock node_socket=/run/slurm-vm/slurm-vmd.sock exec_wrapper=$(BINDIR)/slurm-vm"
	install -D -m 0644 packaging/catalog.toml $(DESTDIR)$(SYSCONFDIR)/slurm-vm/examples/catalog.toml
	install -D -m 0644 packaging/node.toml $(DESTDIR)$(SYSCONFDIR)/slurm-vm/examples/node.toml
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|@SBINDIR@|$(SBINDIR)|g' packaging/slurm-vmd.service > $(DESTDIR)$(UNITDIR)/slurm-vmd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/slurm-vmd.service
	install -D -m 0644 Images/minimal.toml $(DESTDIR)$(DATADIR)/images/minimal.toml
	install -D -m 0644 Images/mpich.toml $(DESTDIR)$(DATADIR)/images/mpich.toml
	install -D -m 0644 Images/README.md $(DESTDIR)$(DATADIR)/images/README.md
	for f in Images/agent/*; do install -D -m 0644 $$f $(DESTDIR)$(DATADIR)/images/agent/$$(basename $$f); done
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	for f in docs/*.md; do install -D -m 0644 $$f $(DESTDIR)$(DOCDIR)/$$(basename $$f); done

deb:
	scripts/package.sh

clean:
	rm -rf .build/release dist
	$(MAKE) -C Plugin clean

.PHONY: all build install deb clean
