/// The value of one backend's key under an etcd prefix:
///
///     {"address": "10.0.0.5:6379", "weight": 2, "priority": 0, "state": "enabled", "max_connections": 500}
///
/// `address` (an IP address and port) is required; the other fields are optional, with the defaults and
/// ranges of a `backends:` entry in the configuration file. Unknown fields are refused, as unknown keys are in
/// the file: a misspelt `wieght` would otherwise pass unnoticed.
extension Etcd {
    public static let recordFields = ["address", "weight", "priority", "state", "max_connections"]
    static let recordExample = #"{"address": "10.0.0.5:6379", "weight": 1}"#

    /// Why a key's value is not a backend record, and how to fix it.
    public struct RecordError: Error, Equatable, Sendable, CustomStringConvertible {
        public let key: String
        public let problem: String
        public let fix: String

        public init(key: String, problem: String, fix: String) {
            self.key = key
            self.problem = problem
            self.fix = fix
        }

        public var description: String { "etcd key \(key): \(problem); \(fix)" }
    }

    /// The backend a key's value describes.
    public static func backend(key: String, value: [UInt8]) -> Result<FulcrumConfig.Backend, RecordError> {
        func failure(_ problem: String, _ fix: String) -> Result<FulcrumConfig.Backend, RecordError> {
            .failure(RecordError(key: key, problem: problem, fix: fix))
        }
        let json: JSON
        do {
            json = try JSON.parse(value)
        } catch {
            let shown = value.isEmpty ? "empty" : "not JSON (\(error)): \(preview(value))"
            return failure("the value is \(shown)", "write a JSON object such as \(recordExample)")
        }
        guard case .object(let members) = json else {
            return failure("the value is \(kind(json)), not a JSON object", "write a JSON object such as \(recordExample)")
        }
        var seen: Set<String> = []
        for member in members {
            if !recordFields.contains(member.key) {
                let scored = recordFields.map { ($0, editDistance(Array(member.key), Array($0))) }
                let best = scored.min { $0.1 < $1.1 }
                let suggestion = best.flatMap { $0.1 <= max(2, member.key.count / 3) ? "did you mean '\($0.0)'? " : nil } ?? ""
                return failure("unknown field '\(member.key)'",
                               "\(suggestion)the fields are \(recordFields.joined(separator: ", "))")
            }
            if !seen.insert(member.key).inserted {
                return failure("field '\(member.key)' appears twice", "keep one of them")
            }
        }
        guard let addressValue = json["address"] else {
            return failure("the value has no \"address\"", "add the backend's IP address and port, e.g. \(recordExample)")
        }
        guard case .string(let addressText) = addressValue else {
            return failure("\"address\" is \(kind(addressValue)), not a string", "write it as \"10.0.0.5:6379\"")
        }
        let address: SocketAddress
        switch ConfigValue.address(addressText) {
        case .success(let parsed) where parsed.port != 0:
            address = parsed
        case .success:
            return failure("\"address\" \(addressText) has port 0", "name the port the backend listens on, e.g. \"10.0.0.5:6379\"")
        case .failure(.hostname(let host)):
            return failure("\"address\" names the host '\(host)'; a record holds an IP address",
                           "write the address, e.g. \"10.0.0.5:6379\" or \"[fd00::5]:6379\"")
        case .failure(.portOutOfRange(let port)):
            return failure("\"address\" port \(port) is out of range", "use a port from 1 to 65535")
        case .failure(.malformed):
            return failure("\"address\" '\(addressText)' is not an IP address and port",
                           "write it as \"10.0.0.5:6379\" or \"[fd00::5]:6379\"")
        }
        var backend = FulcrumConfig.Backend(address: address)
        do throws(RecordError) {
            if let weight = try integer(json, "weight", key, in: ConfigLimits.weight,
                                        note: " (to take a backend out of rotation, set \"state\": \"drain\" or delete its key)") {
                backend.weight = weight
            }
            if let priority = try integer(json, "priority", key, in: ConfigLimits.priority) { backend.priority = priority }
            backend.maxConnections = try integer(json, "max_connections", key, in: ConfigLimits.maxConnections)
        } catch {
            return .failure(error)
        }
        if let stateValue = json["state"] {
            let states = OperatorState.allCases.map(\.rawValue).joined(separator: ", ")
            guard case .string(let text) = stateValue, let state = OperatorState(rawValue: text) else {
                return failure("\"state\" \(stateValue.text) is not a backend state", "use one of \(states)")
            }
            backend.state = state
        }
        return .success(backend)
    }

    private static func integer(_ json: JSON, _ field: String, _ key: String, in range: ClosedRange<Int>,
                                note: String = "") throws(RecordError) -> Int? {
        guard let value = json[field] else { return nil }
        guard case .int(let number) = value else {
            throw RecordError(key: key, problem: "\"\(field)\" is \(kind(value)), not an integer",
                              fix: "write a number from \(range.lowerBound) to \(range.upperBound)")
        }
        guard range.contains(number) else {
            throw RecordError(key: key, problem: "\"\(field)\" \(number) is out of range",
                              fix: "use \(range.lowerBound) to \(range.upperBound)\(note)")
        }
        return number
    }

    private static func kind(_ value: JSON) -> String {
        switch value {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int, .double: return "the number \(value.text)"
        case .string(let text): return "the string \(JSON.string(text).text)"
        case .array: return "a list"
        case .object: return "an object"
        }
    }

    /// A backend's record as the registration sidecar writes it: address, weight, priority and state, and
    /// max_connections when it has a limit.
    public static func recordValue(_ backend: FulcrumConfig.Backend) -> [UInt8] {
        var members: [JSON.Member] = [
            .init("address", .string(backend.address.description)),
            .init("weight", .int(backend.weight)),
            .init("priority", .int(backend.priority)),
            .init("state", .string(backend.state.rawValue)),
        ]
        if let limit = backend.maxConnections { members.append(.init("max_connections", .int(limit))) }
        return Array(JSON.object(members).text.utf8)
    }
}

// MARK: - Endpoints

extension Etcd {
    /// Why an endpoint URL is refused, and how to write it.
    public struct EndpointError: Error, Equatable, Sendable, CustomStringConvertible {
        public let problem: String
        public let fix: String

        public var description: String { "\(problem); \(fix)" }
    }

    /// `http://HOST:PORT` with an IP address or localhost (port 2379 when none is given). TLS and
    /// credentials are refused with the reason: Fulcrum speaks plain HTTP to etcd, without auth.
    public static func endpoint(_ text: String) -> Result<SocketAddress, EndpointError> {
        func failure(_ problem: String, _ fix: String = "write it as http://127.0.0.1:2379") -> Result<SocketAddress, EndpointError> {
            .failure(EndpointError(problem: problem, fix: fix))
        }
        if text.hasPrefix("https://") {
            return failure("TLS to etcd is not supported yet",
                           "use etcd's plain HTTP client URL (http://...) on a trusted network, e.g. a local etcd proxy")
        }
        guard text.hasPrefix("http://") else { return failure("'\(text)' is not an http:// URL") }
        var rest = String(text.dropFirst("http://".count))
        if rest.hasSuffix("/") { rest.removeLast() }
        if rest.contains("@") {
            return failure("etcd authentication is not supported yet",
                           "drop the user name and password; run etcd without auth on a trusted network")
        }
        if rest.contains("/") { return failure("'\(text)' has a path; an etcd endpoint is a scheme, host and port") }
        switch ConfigValue.address(rest.contains(":") && !rest.hasSuffix("]") ? rest : "\(rest):2379") {
        case .success(let address) where address.port != 0:
            return .success(address)
        case .failure(.hostname(let host)):
            return failure("'\(host)' is a host name; an etcd endpoint must be an IP address or localhost",
                           "write the address, e.g. http://127.0.0.1:2379")
        default:
            return failure("'\(text)' is not an etcd URL")
        }
    }
}
