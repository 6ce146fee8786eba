// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Fulcrum",
    products: [
        .executable(name: "fulcrum", targets: ["fulcrum"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // libevent, seen through its headers plus a shim for the few macros Swift cannot import.
        .systemLibrary(
            name: "CLibevent",
            pkgConfig: "libevent",
            providers: [.apt(["libevent-dev"])]
        ),
        // The only module that touches libevent: event base, timers, signals, wakeups, listeners, relays.
        // Relay state lives in a final class touched only from its own loop thread; dynamic exclusivity
        // checks on its fields cost ~60 instructions per forwarded chunk (measured with callgrind), so the
        // data-path module leaves them to the compiler's static checks.
        .target(name: "EventLoop", dependencies: ["CLibevent"],
                swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]),
        // Pure Swift, no I/O: configuration, balancing, time and randomness abstractions. Every proxied
        // connection picks and releases a backend through class-held balancer state; dynamic exclusivity
        // checks there cost ~680 instructions per connection (bench/callgrind.sh), so release builds keep
        // the compiler's static checks only, like the two modules below. Debug builds (the tests) keep both.
        .target(name: "FulcrumCore", dependencies: [.product(name: "Yams", package: "Yams")],
                swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]),
        // The engine: workers, listeners, connectors with retries; wires the core to the event loop.
        // Sessions drive their lifecycle (a struct field of a loop-confined class) several times per
        // connection; dynamic exclusivity checks on those fields cost ~2,600 instructions per proxied
        // connection (callgrind, bench/callgrind.sh), so release builds keep the compiler's static checks only.
        .target(
            name: "Fulcrum",
            dependencies: ["EventLoop", "FulcrumCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        .executableTarget(
            name: "fulcrum",
            dependencies: [
                "Fulcrum", "FulcrumCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "FulcrumTestSupport", dependencies: ["FulcrumCore"]),
        // Plain timed harness: picks per second for every strategy and pool size (bench/picks.sh).
        .executableTarget(name: "PickBenchmark", dependencies: ["FulcrumCore"], path: "bench/PickBenchmark"),
        .testTarget(name: "FulcrumCoreTests", dependencies: ["FulcrumCore", "FulcrumTestSupport"]),
        .testTarget(name: "EventLoopTests", dependencies: ["EventLoop", "FulcrumCore", "FulcrumTestSupport"]),
        .testTarget(name: "FulcrumTests", dependencies: [
            "Fulcrum", "FulcrumCore", "FulcrumTestSupport", .product(name: "Logging", package: "swift-log"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
