/// One problem found in a configuration file: where it is, which key, what is wrong and how to fix it.
public struct ConfigDiagnostic: Equatable, Sendable, CustomStringConvertible {
    public var file: String
    /// 1-based line of the offending key or value; 0 when the problem is about the file as a whole.
    public var line: Int
    /// Dotted key path, e.g. `pools.redis.backends[1].weight`; empty for the document root.
    public var keyPath: String
    public var message: String
    /// What would be valid, or how to fix it.
    public var hint: String?

    public init(file: String, line: Int, keyPath: String, message: String, hint: String? = nil) {
        self.file = file
        self.line = line
        self.keyPath = keyPath
        self.message = message
        self.hint = hint
    }

    public var description: String {
        var text = "\(file):\(line): "
        if !keyPath.isEmpty { text += "\(keyPath): " }
        text += message
        if let hint { text += " (\(hint))" }
        return text
    }
}

/// Every problem found in one configuration file, in file order. Thrown by `ConfigLoader`.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var diagnostics: [ConfigDiagnostic]

    public init(_ diagnostics: [ConfigDiagnostic]) {
        self.diagnostics = diagnostics.sorted { $0.line < $1.line }
    }

    public var description: String {
        let noun = diagnostics.count == 1 ? "error" : "errors"
        return (["\(diagnostics.count) configuration \(noun):"] + diagnostics.map { "  " + $0.description })
            .joined(separator: "\n")
    }
}
