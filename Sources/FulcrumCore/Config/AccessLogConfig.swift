import Yams

/// `access_log`: one line per client connection when it ends, written by a thread of its own.
public struct AccessLogConfig: Equatable, Sendable {
    public enum Destination: Equatable, Sendable, CustomStringConvertible {
        /// The process's standard output (never reopened).
        case stdout
        /// A file, opened for appending (created with mode 0644) and reopened on SIGUSR1.
        case file(String)

        public var description: String {
            switch self {
            case .stdout: return "stdout"
            case .file(let path): return path
            }
        }
    }

    public enum Format: String, Equatable, Sendable, CaseIterable {
        case json
        case logfmt
    }

    public var destination: Destination
    public var format: Format

    public static let defaultFormat = Format.logfmt

    public init(destination: Destination, format: Format = Self.defaultFormat) {
        self.destination = destination
        self.format = format
    }

    /// `path stdout, format logfmt`, as `fulcrum check` and reload lines print it.
    public var description: String { "path \(destination), format \(format.rawValue)" }
}

extension ConfigLoader {
    static let accessLogKeys = ["path", "format"]

    /// `access_log: off`, or `{path: stdout | FILE | off, format: json | logfmt}`; nil when off.
    static func accessLog(_ node: Node, pidFile: String?, upgradeSocket: String?,
                          _ r: inout YAMLReader) -> AccessLogConfig? {
        if case .scalar(let scalar) = node {
            if scalar.string == "off" { return nil }
            r.report(node, "access_log", "'\(scalar.string)' is not an access log setting",
                     hint: "write access_log: {path: stdout, format: logfmt}, a file path instead of stdout, or access_log: off")
            return nil
        }
        guard let f = r.fields(node, "access_log", known: accessLogKeys) else { return nil }
        var format = AccessLogConfig.defaultFormat
        if let formatNode = f["format"], let text = r.scalar(formatNode, f.path("format"), expecting: "json or logfmt") {
            if let known = AccessLogConfig.Format(rawValue: text) {
                format = known
            } else {
                r.report(formatNode, f.path("format"), "'\(text)' is not an access log format",
                         hint: "use json (one JSON object per line) or logfmt (key=value pairs)")
            }
        }
        guard let pathNode = f["path"] else {
            r.report(node, f.path("path"), "missing required key 'path'",
                     hint: "add path: stdout, a file path such as /var/log/fulcrum/access.log, or path: off")
            return nil
        }
        guard let path = r.scalar(pathNode, f.path("path"), expecting: "stdout, off or a file path") else { return nil }
        switch path {
        case "off":
            return nil
        case "stdout":
            return AccessLogConfig(destination: .stdout, format: format)
        default:
            if path.isEmpty || path.hasSuffix("/") || path.contains("\0") {
                r.report(pathNode, f.path("path"), "'\(path)' is not a file path",
                         hint: "name a file, e.g. path: /var/log/fulcrum/access.log, or use stdout or off")
                return nil
            }
            if path == pidFile || path == upgradeSocket {
                r.report(pathNode, f.path("path"), "'\(path)' is also the \(path == pidFile ? "pid_file" : "upgrade_socket")",
                         hint: "give the access log its own file, e.g. path: /var/log/fulcrum/access.log")
                return nil
            }
            return AccessLogConfig(destination: .file(path), format: format)
        }
    }
}
