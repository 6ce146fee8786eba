/// Writes metrics in the Prometheus text exposition format (version 0.0.4): one family at a time, each with
/// `# HELP` and `# TYPE`, then its samples in the order they are added (callers add them in a stable
/// order: by pool, then backend slot, then label value). Label values are escaped (backslash, double
/// quote, newline); HELP text escapes backslash and newline. Histograms take per-bucket counts and write
/// the cumulative `_bucket{le=…}` series, `+Inf` included, then `_sum` and `_count`.
///
/// ```swift
/// var text = PrometheusText()
/// text.family("fulcrum_pool_retries_total", .counter, help: "Retries.")
/// text.sample("fulcrum_pool_retries_total", ["pool": "web"], 3)   // fulcrum_pool_retries_total{pool="web"} 3
/// ```
public struct PrometheusText {
    public enum Kind: String, Sendable {
        case counter, gauge, histogram
    }

    public private(set) var output = ""
    private var families: Set<String> = []

    /// The content type of the format, for the HTTP answer.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public init() {}

    /// Starts a family: its HELP and TYPE lines. Each name is started once.
    public mutating func family(_ name: String, _ kind: Kind, help: String) {
        precondition(families.insert(name).inserted, "metric family \(name) started twice")
        output += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(kind.rawValue)\n"
    }

    /// One sample of a counter or gauge.
    public mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Int) {
        line(name, labels, "\(value)")
    }

    public mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Double) {
        line(name, labels, Self.format(value))
    }

    /// One histogram's series: `counts` are per bucket (not cumulative), one per bound in `bounds` plus the
    /// `+Inf` bucket; `bounds` and `sum` are in the unit the family names (seconds).
    public mutating func histogram(_ name: String, _ labels: [(String, String)] = [], bounds: [Double],
                                   counts: [Int], sum: Double) {
        precondition(counts.count == bounds.count + 1, "one count per bound, plus +Inf")
        var cumulative = 0
        for (index, count) in counts.enumerated() {
            cumulative &+= count
            let le = index < bounds.count ? Self.format(bounds[index]) : "+Inf"
            line(name + "_bucket", labels + [("le", le)], "\(cumulative)")
        }
        line(name + "_sum", labels, Self.format(sum))
        line(name + "_count", labels, "\(cumulative)")
    }

    private mutating func line(_ name: String, _ labels: [(String, String)], _ value: String) {
        output += name
        if !labels.isEmpty {
            output += "{"
            for (index, (key, value)) in labels.enumerated() {
                if index > 0 { output += "," }
                output += key + "=\"" + Self.escapeLabel(value) + "\""
            }
            output += "}"
        }
        output += " " + value + "\n"
    }

    /// A label value as the format wants it: `\` → `\\`, `"` → `\"`, newline → `\n`.
    public static func escapeLabel(_ value: String) -> String {
        guard value.contains(where: { $0 == "\\" || $0 == "\"" || $0 == "\n" }) else { return value }
        var result = ""
        for character in value {
            switch character {
            case "\\": result += "\\\\"
            case "\"": result += "\\\""
            case "\n": result += "\\n"
            default: result.append(character)
            }
        }
        return result
    }

    /// HELP text: `\` → `\\`, newline → `\n`.
    public static func escapeHelp(_ text: String) -> String {
        text.replacingAll("\\", with: "\\\\").replacingAll("\n", with: "\\n")
    }

    /// A float as the format writes it: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
    public static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded() && abs(value) < 1e15 { return "\(Int64(value))" }
        return "\(value)"
    }
}

extension String {
    fileprivate func replacingAll(_ target: Character, with replacement: String) -> String {
        guard contains(target) else { return self }
        var result = ""
        for character in self {
            if character == target { result += replacement } else { result.append(character) }
        }
        return result
    }
}
