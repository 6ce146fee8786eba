/// The balancing strategy a pool names in `balance:`, with its options. Each case is implemented by one
/// `BalancingStrategy` class in its own file; `StrategyRegistry` maps config names to them.
public enum BalanceStrategy: Equatable, Sendable {
    case roundRobin
    case random
    case leastConnections
    case powerOfTwoChoices
    case peakEWMA(decay: Duration, defaultLatency: Duration)
    case hash(key: HashKey, balanceFactor: Double?)
    case first

    public static let defaultEWMADecay: Duration = .seconds(10)
    public static let defaultEWMALatency: Duration = .milliseconds(10)

    /// The name used in configuration files.
    public var name: String {
        switch self {
        case .roundRobin: return "round_robin"
        case .random: return "random"
        case .leastConnections: return "least_connections"
        case .powerOfTwoChoices: return "p2c"
        case .peakEWMA: return "peak_ewma"
        case .hash: return "hash"
        case .first: return "first"
        }
    }

    /// Whether the engine should measure latency on this pool's connections.
    public var measuresLatency: Bool {
        if case .peakEWMA = self { return true }
        return false
    }

    /// Which client hash the strategy needs, if any.
    public var hashKey: HashKey? {
        if case .hash(let key, _) = self { return key }
        return nil
    }

    /// Options in the form `fulcrum check` prints them.
    public var optionsText: String {
        switch self {
        case .peakEWMA(let decay, let latency):
            return "decay \(decay.configText), default_latency \(latency.configText)"
        case .hash(let key, let factor):
            return "key \(key.rawValue)" + (factor.map { ", hash_balance_factor \($0)" } ?? "")
        default:
            return ""
        }
    }

    /// A new strategy instance over `table`.
    public func makeStrategy(table: BackendTable, random: FastRandom) -> any BalancingStrategy {
        switch self {
        case .roundRobin: return RoundRobinStrategy(table: table)
        case .random: return RandomStrategy(table: table, random: random)
        case .leastConnections: return LeastConnectionsStrategy(table: table)
        case .powerOfTwoChoices: return PowerOfTwoChoicesStrategy(table: table, random: random)
        case .peakEWMA(let decay, let latency):
            return PeakEWMAStrategy(table: table, random: random, decay: decay, defaultLatency: latency)
        case .hash(_, let factor): return ConsistentHashStrategy(table: table, balanceFactor: factor)
        case .first: return FirstStrategy(table: table)
        }
    }
}

/// Every strategy a configuration can name, with the options each takes.
public enum StrategyRegistry {
    public struct Entry: Sendable {
        public let name: String
        public let options: [String]
    }

    public static let all: [Entry] = [
        Entry(name: "round_robin", options: []),
        Entry(name: "random", options: []),
        Entry(name: "least_connections", options: []),
        Entry(name: "p2c", options: []),
        Entry(name: "peak_ewma", options: ["decay", "default_latency"]),
        Entry(name: "hash", options: ["key", "hash_balance_factor"]),
        Entry(name: "first", options: []),
    ]

    public static var names: [String] { all.map(\.name) }

    public static func entry(named name: String) -> Entry? { all.first { $0.name == name } }
}
