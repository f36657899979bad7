# zgate: the two commands a new user needs are `make run` and `make test`.
#   make          build build/zgate (installing missing Debian packages first)
#   make run      build, then start a fake OpenAI upstream and zgate on port 4000
#   make test     build with ASan/UBSan in build-asan/ and run every test, then run them
#                 again on the build that `make` makes (build/), the binary users run
#   make bench    build, then compare the fake upstream, nginx and zgate (bench/run.sh)

BUILD      ?= build
TEST_BUILD ?= build-asan
JOBS       ?= $(shell nproc)

.PHONY: all build run test bench clean deps

all: build

deps:
	@scripts/install-deps.sh build

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	@scripts/run.sh $(BUILD)

test:
	@scripts/install-deps.sh test
	@cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DZG_SANITIZE=ON >/dev/null
	@cmake --build $(TEST_BUILD) -j $(JOBS)
	@cd $(TEST_BUILD) && ctest --output-on-failure --timeout 600 -j 1
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@cd $(BUILD) && ctest --output-on-failure --timeout 600 -j 1

bench:
	@scripts/install-deps.sh bench
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@bench/run.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(TEST_BUILD)
