import FulcrumCore

/// A pool balancer over backends with `weights`, using `strategy` with a fixed seed.
func makePool(_ strategy: BalanceStrategy, weights: [Int], priorities: [Int]? = nil, limits: [Int?]? = nil,
              slowStart: Duration = .zero, seed: UInt64 = 42) -> PoolBalancer {
    let backends = weights.indices.map { i in
        PoolBalancer.Backend(weight: weights[i], priority: priorities?[i] ?? 0, maxConnections: limits?[i] ?? nil,
                             identity: StableHash.hash("10.0.0.\(i):6379"))
    }
    var next = seed
    return PoolBalancer(backends: backends, slowStart: slowStart) { table in
        next = StableHash.mix(next)
        return strategy.makeStrategy(table: table, random: FastRandom(seed: next))
    }
}

extension PoolBalancer {
    /// Picks once and releases at once (a connection that ends immediately).
    func pickAndRelease(tried: TriedBackends = TriedBackends(), context: PickContext = PickContext()) -> Int? {
        guard case .backend(let b) = pick(tried: tried, context: context) else { return nil }
        release(b)
        return b
    }

    /// Picks and keeps the connection open.
    func hold(context: PickContext = PickContext()) -> Int? {
        guard case .backend(let b) = pick(tried: TriedBackends(), context: context) else { return nil }
        return b
    }

    /// How many of `n` short connections each backend gets.
    func distribution(_ n: Int, count: Int, context: (Int) -> PickContext = { _ in PickContext() }) -> [Int] {
        var counts = Array(repeating: 0, count: count)
        for i in 0..<n {
            if let b = pickAndRelease(context: context(i)) { counts[b] += 1 }
        }
        return counts
    }
}
