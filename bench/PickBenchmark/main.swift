// Picks per second for every balancing strategy over pools of 3, 100 and 10,000 backends.
//
//   swift run -c release PickBenchmark            # full run, prints a Markdown table
//   swift run -c release PickBenchmark 1000       # picks per case (default 1,000,000)
//
// Each pick is followed by a release, as for a connection that ends at once, so connection-counting
// strategies do their full bookkeeping. bench/picks.sh also runs it under valgrind twice with different
// pick counts to show that picks allocate nothing (the allocation count does not grow with picks).
import FulcrumCore
#if canImport(Glibc)
import Glibc
#endif

let picks = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 1_000_000 : 1_000_000
let strategies: [BalanceStrategy] = [
    .roundRobin, .random, .leastConnections, .powerOfTwoChoices,
    .peakEWMA(decay: .seconds(10), defaultLatency: .milliseconds(10)),
    .hash(key: .ip, balanceFactor: nil), .hash(key: .ip, balanceFactor: 1.25), .first,
]
let sizes = [3, 100, 10_000]

func nowNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func label(_ strategy: BalanceStrategy) -> String {
    if case .hash(_, let factor?) = strategy { return "hash (bounded \(factor))" }
    return strategy.name
}

print("| strategy | 3 backends | 100 backends | 10,000 backends |")
print("|---|---:|---:|---:|")
var checksum = 0
for strategy in strategies {
    var cells: [String] = []
    for size in sizes {
        let backends = (0..<size).map {
            PoolBalancer.Backend(weight: $0 % 3 + 1, maxConnections: strategy == .first ? 1_000_000 : nil,
                                 identity: StableHash.hash("10.0.\($0 / 256).\($0 % 256):6379"))
        }
        var seed: UInt64 = 1
        let pool = PoolBalancer(backends: backends) { table in
            seed = StableHash.mix(seed)
            return strategy.makeStrategy(table: table, random: FastRandom(seed: seed))
        }
        let tried = TriedBackends()
        var context = PickContext()
        let start = nowNanos()
        for i in 0..<picks {
            context.clientHash = StableHash.mix(UInt64(i))
            context.now = Int64(i)
            if case .backend(let b) = pool.pick(tried: tried, context: context) {
                checksum &+= b
                pool.release(b)
            }
        }
        let seconds = Double(nowNanos() - start) / 1e9
        let rate = Double(picks) / seconds
        cells.append(rate >= 1e6 ? String(format: "%.1f M/s", rate / 1e6) : String(format: "%.0f k/s", rate / 1e3))
    }
    print("| \(label(strategy)) | \(cells.joined(separator: " | ")) |")
}
if checksum == 42 { print("") } // keeps the picks from being optimised away
