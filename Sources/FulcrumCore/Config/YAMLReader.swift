import Yams

/// Walks a composed YAML tree, collecting diagnostics instead of stopping at the first problem.
struct YAMLReader {
    let file: String
    private(set) var diagnostics: [ConfigDiagnostic] = []

    init(file: String) { self.file = file }

    mutating func report(_ node: Node?, _ path: String, _ message: String, hint: String? = nil) {
        diagnostics.append(ConfigDiagnostic(file: file, line: node?.mark?.line ?? 0, keyPath: path,
                                            message: message, hint: hint))
    }

    /// The keys of a mapping node, with unknown and duplicated keys reported.
    mutating func fields(_ node: Node, _ path: String, known: [String]) -> Fields? {
        guard case .mapping(let mapping) = node else {
            report(node, path, "expected a mapping of keys (\(known.joined(separator: ", "))), got \(node.kindName)")
            return nil
        }
        var fields = Fields(path: path, node: node)
        for (key, value) in mapping {
            guard case .scalar(let scalar) = key else {
                report(key, path, "keys must be plain names")
                continue
            }
            let name = scalar.string
            let keyPath = path.isEmpty ? name : "\(path).\(name)"
            if !known.contains(name) {
                let suggestion = closest(name, in: known).map { "did you mean '\($0)'? " } ?? ""
                report(key, keyPath, "unknown key '\(name)'",
                       hint: "\(suggestion)valid keys here: \(known.joined(separator: ", "))")
            } else if fields.values[name] != nil {
                report(key, keyPath, "key '\(name)' appears twice", hint: "keep one of them")
            } else {
                fields.values[name] = (key, value)
            }
        }
        return fields
    }

    mutating func scalar(_ node: Node, _ path: String, expecting: String) -> String? {
        guard case .scalar(let scalar) = node else {
            report(node, path, "expected \(expecting), got \(node.kindName)")
            return nil
        }
        return scalar.string
    }

    mutating func sequence(_ node: Node, _ path: String, of item: String) -> [Node]? {
        guard case .sequence(let sequence) = node else {
            report(node, path, "expected a list of \(item), got \(node.kindName)", hint: "start each item with '- '")
            return nil
        }
        return Array(sequence)
    }

    /// A duration within `range`. Zero is allowed only when the range starts at zero (where it means "off"
    /// or "at once"); any other value below 1us is rejected, as timers would round it down to zero.
    mutating func duration(_ node: Node, _ path: String, in range: ClosedRange<Duration>) -> Duration? {
        guard let text = scalar(node, path, expecting: ConfigValue.durationHint) else { return nil }
        let allowed = "use a duration from \(range.configText)"
        switch ConfigValue.parseDuration(text) {
        case .failure(.malformed):
            report(node, path, "'\(text)' is not a duration", hint: "use \(ConfigValue.durationHint)")
            return nil
        case .failure(.tooLarge):
            report(node, path, "'\(text)' is too long", hint: allowed)
            return nil
        case .success(let value):
            if value == .zero && range.lowerBound > .zero {
                report(node, path, "must be greater than zero", hint: allowed)
            } else if value > .zero && value < ConfigLimits.resolution {
                report(node, path, "'\(text)' is shorter than 1us, the finest time Fulcrum keeps",
                       hint: range.lowerBound == .zero
                           ? "use 0s or a duration from 1us to \(range.upperBound.configText)" : allowed)
            } else if value < range.lowerBound {
                report(node, path, "'\(text)' is too short", hint: allowed)
            } else if value > range.upperBound {
                report(node, path, "'\(text)' is too long", hint: allowed)
            } else {
                return value
            }
            return nil
        }
    }

    /// A size in bytes within `range`.
    mutating func size(_ node: Node, _ path: String, in range: ClosedRange<Int>) -> Int? {
        guard let text = scalar(node, path, expecting: ConfigValue.sizeHint) else { return nil }
        let allowed = "use a size from \(sizeText(range.lowerBound)) to \(sizeText(range.upperBound))"
        switch ConfigValue.parseSize(text) {
        case .failure(.malformed):
            report(node, path, "'\(text)' is not a size", hint: "use \(ConfigValue.sizeHint)")
        case .failure(.tooLarge):
            report(node, path, "'\(text)' is out of range", hint: allowed)
        case .success(let value):
            if range.contains(value) { return value }
            report(node, path, "\(sizeText(value)) is out of range", hint: allowed)
        }
        return nil
    }

    mutating func integer(_ node: Node, _ path: String, in range: ClosedRange<Int>, note: String? = nil) -> Int? {
        let expected = "an integer from \(range.lowerBound) to \(range.upperBound)" + (note.map { "; \($0)" } ?? "")
        guard let text = scalar(node, path, expecting: expected) else { return nil }
        guard let value = Int(text) else {
            // Digits beyond what an Int holds are a number all the same: say it is out of range.
            let digits = text.hasPrefix("-") || text.hasPrefix("+") ? text.dropFirst() : Substring(text)
            let huge = !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
            report(node, path, huge ? "'\(text)' is out of range" : "'\(text)' is not an integer", hint: "use \(expected)")
            return nil
        }
        guard range.contains(value) else {
            report(node, path, "\(value) is out of range", hint: "use \(expected)")
            return nil
        }
        return value
    }

    /// `20%` or `20` (percent), 0 to 100.
    mutating func percent(_ node: Node, _ path: String) -> Double? {
        guard let text = scalar(node, path, expecting: "a percentage such as 20%") else { return nil }
        let number = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let value = Double(number.trimmingSpaces), (0...100).contains(value) else {
            report(node, path, "'\(text)' is not a percentage", hint: "use a value from 0% to 100%, e.g. 20%")
            return nil
        }
        return value
    }

    mutating func boolean(_ node: Node, _ path: String) -> Bool? {
        guard let text = scalar(node, path, expecting: "true or false") else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            report(node, path, "'\(text)' is not true or false", hint: "use true or false")
            return nil
        }
    }

    mutating func address(_ node: Node, _ path: String, allowPortZero: Bool) -> SocketAddress? {
        if let quoted = ConfigLoader.unquotedIPv6(node) {
            report(node, path, "an IPv6 address must be quoted, or YAML reads its brackets as a list",
                   hint: "write it as \(quoted)")
            return nil
        }
        guard let text = scalar(node, path, expecting: ConfigValue.addressHint) else { return nil }
        switch ConfigValue.address(text) {
        case .success(let address):
            if address.port == 0 && !allowPortZero {
                report(node, path, "port 0 is not a valid backend port", hint: "use a port from 1 to 65535")
                return nil
            }
            return address
        case .failure(.portOutOfRange(let port)):
            report(node, path, "port \(port) is out of range", hint: "use a port from 1 to 65535")
        case .failure(.hostname(let host)):
            report(node, path, "'\(host)' is a host name; addresses must be IP literals",
                   hint: "use \(ConfigValue.addressHint)")
        case .failure(.malformed):
            report(node, path, "'\(text)' is not an address", hint: "use \(ConfigValue.addressHint)")
        }
        return nil
    }

    /// The known key nearest to a misspelt one, when it is near enough to be a likely typo.
    private func closest(_ name: String, in known: [String]) -> String? {
        let scored = known.map { ($0, editDistance(Array(name), Array($0))) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= max(2, name.count / 3) else { return nil }
        return best.0
    }
}

/// The recognised keys of one mapping, with the nodes for their key and value.
struct Fields {
    let path: String
    let node: Node
    var values: [String: (key: Node, value: Node)] = [:]

    init(path: String, node: Node) {
        self.path = path
        self.node = node
    }

    subscript(_ name: String) -> Node? { values[name]?.value }

    func path(_ name: String) -> String { path.isEmpty ? name : "\(path).\(name)" }
}

extension Node {
    var kindName: String {
        switch self {
        case .scalar(let s): return s.string.isEmpty ? "an empty value" : "the scalar '\(s.string)'"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }
}

func editDistance(_ a: [Character], _ b: [Character]) -> Int {
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = previous
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
