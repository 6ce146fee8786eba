# Fulcrum: `make run` sets up and runs the proxy on the bundled example; `make test` sets up and runs
# every test. Both install missing Debian packages first (as root, or through sudo).

SWIFT_BIN ?= /opt/swift/usr/bin
export PATH := $(SWIFT_BIN):$(PATH)
SWIFT ?= swift

BUILD_PACKAGES := libevent-dev pkg-config
RUN_PACKAGES := $(BUILD_PACKAGES) redis-server redis-tools
TEST_PACKAGES := $(BUILD_PACKAGES) valgrind binutils python3 python3-prometheus-client redis-server faketime util-linux iproute2 \
	chromium chromium-driver python3-selenium etcd-server etcd-client dnsmasq-base

# The release build; the Dockerfile runs exactly this.
RELEASE_FLAGS := -c release --static-swift-stdlib --product fulcrum

.PHONY: run test build release deps-run deps-test check bench leakcheck clean

run: deps-run release
	examples/run-demo.sh

test: deps-test
	$(SWIFT) build --build-tests
	Tests/leakcheck.sh
	# Pure and event-loop unit tests first, then the loopback suites (serialized among themselves), so the
	# CPU-heavy unit tests (the config fuzzer) never run beside the timing-sensitive ones.
	SWIFT=$(SWIFT) Tests/run-suite.sh --skip-build --filter 'FulcrumCoreTests|EventLoopTests'
	SWIFT=$(SWIFT) Tests/run-suite.sh --skip-build --filter 'FulcrumTests\.'

build: deps-test
	$(SWIFT) build

release:
	.ci/ensure-packages $(BUILD_PACKAGES)
	$(SWIFT) build $(RELEASE_FLAGS)

check: release
	.build/release/fulcrum check --config examples/quickstart.yaml

bench:
	bench/compare.sh

leakcheck: build
	Tests/leakcheck.sh

deps-run:
	.ci/ensure-packages $(RUN_PACKAGES)

deps-test:
	.ci/ensure-packages $(TEST_PACKAGES)

clean:
	rm -rf .build bench/out examples/run
