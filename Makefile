# One entry point for set-up, the example, the tests and the benchmarks.
# Everything is installed by these targets themselves: Debian packages, the venv, the image.
# The engine needs root (cgroups, uid maps): run `sudo make run` / `sudo make test` as a user.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEBS   := python3 python3-venv libseccomp2 libstdc++6

.PHONY: run test test-cgroup2 bench image doctor system chromium npm-deps deploy-deps vm-system clean

run: $(STAMP) image          ## build everything and run the example (prints, draws a chart, writes a file)
	$(BIN)/sandbox doctor
	$(BIN)/sandbox run examples/analysis.py --file examples/sales.csv --out results
	@echo "chart and files written to results/"

test: $(STAMP) image chromium npm-deps deploy-deps ## the whole test suite, against real jails
	$(BIN)/python -m pytest -q tests

test-cgroup2: $(STAMP) image vm-system  ## the cgroup-dependent tests on a cgroup v2 host: a Debian 12 VM (docs/operations.md)
	vm/run.sh

bench: $(STAMP) image        ## full benchmark run; results in bench-results/
	$(BIN)/sandbox bench --out bench-results

image: $(STAMP)              ## build (or verify) the default image; rebuilt only when its lock changes
	$(BIN)/sandbox image build

doctor: $(STAMP)
	$(BIN)/sandbox doctor

system:                      ## Debian packages the host side needs (skipped when already present)
	@if command -v dpkg >/dev/null && ! dpkg -s $(DEBS) >/dev/null 2>&1; then \
		echo "installing Debian packages: $(DEBS)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); \
	fi

chromium:                    ## Debian's Chromium for the playground's browser test (skipped when present)
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing Debian's chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

DEPLOY_DEBS := systemd openssl podman runc debootstrap
deploy-deps:                 ## what tests/test_deploy.py, test_container.py and server/test_ops.py need: systemd-analyze, openssl, podman (skipped when present)
	@if command -v dpkg >/dev/null && ! dpkg -s $(DEPLOY_DEBS) >/dev/null 2>&1; then \
		echo "installing Debian packages: $(DEPLOY_DEBS)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEPLOY_DEBS); \
	fi

LIBRECHAT_CLIENT := tests/compat/librechat
npm-deps:                    ## LibreChat's own client (npm) for tests/compat (skipped when already installed)
	@if [ ! -d $(LIBRECHAT_CLIENT)/node_modules/@librechat/agents ]; then \
		command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }; \
		echo "installing LibreChat's client into $(LIBRECHAT_CLIENT)"; \
		cd $(LIBRECHAT_CLIENT) && npm ci --no-audit --no-fund --loglevel=error; \
	fi

vm-system:                   ## qemu and debootstrap for test-cgroup2 (skipped when already present)
	@if ! command -v qemu-system-x86_64 >/dev/null || ! command -v debootstrap >/dev/null; then \
		echo "installing Debian packages: qemu-system-x86 debootstrap"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 debootstrap e2fsprogs; \
	fi

$(STAMP): pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# editable_mode=compat: the checkout on sys.path by a plain .pth line; the default editable mode's
	# import finder costs every `sandbox` command ~14 ms of start-up (docs/performance.md)
	$(BIN)/pip install -q -e '.[test,bench,server,agent,compat,ray]' --config-settings editable_mode=compat
	touch $(STAMP)

clean:
	rm -rf $(VENV) results bench-results .pytest_cache
