import Yams

/// Diagnostics for text that is not valid YAML, each on the line where the problem is, and the advice for
/// the one slip users make most: an IPv6 address written unquoted, whose brackets YAML reads as a list.
extension ConfigLoader {
    static func syntaxDiagnostic(_ error: Error, text: String, file: String) -> ConfigDiagnostic {
        let lines = yamlLines(text)
        // Line 0 (the file as a whole) only for failures libyaml gives no position for, such as out of memory.
        guard let yaml = error as? YamlError else {
            return ConfigDiagnostic(file: file, line: 0, keyPath: "", message: "YAML syntax error: \(error)")
        }
        switch yaml {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
             .composer(_, let problem, let mark, _):
            let line = min(max(1, mark.line), max(1, lines.count))
            if lines.indices.contains(line - 1), let advice = unquotedIPv6Advice(in: lines[line - 1]) {
                return ConfigDiagnostic(file: file, line: line, keyPath: "",
                                        message: "an IPv6 address must be quoted, or YAML reads its brackets as a list",
                                        hint: advice)
            }
            if problem.hasPrefix("Maximum nesting level") {
                return ConfigDiagnostic(file: file, line: line, keyPath: "",
                                        message: "YAML syntax error: nested deeper than 1000 levels",
                                        hint: "check for unbalanced brackets or braces near this line")
            }
            return ConfigDiagnostic(file: file, line: line, keyPath: "", message: "YAML syntax error: \(problem)",
                                    hint: "check indentation and quoting near this line")
        case .duplicatedKeysInMapping(let duplicates, let context):
            // Yams names the first occurrence; the second is the one to point at.
            let key = duplicates.first ?? ""
            let name = key == "<uncovertable>" ? "a key" : "key '\(key)'"
            let first = max(1, context.mark.line)
            let column = context.mark.column - 1
            let second = lines.indices.dropFirst(first).first { i in
                let scalars = lines[i].unicodeScalars
                guard scalars.count > column, column >= 0 else { return false }
                let rest = Substring(scalars.dropFirst(column))
                return rest.hasPrefix(key + ":") && scalars.prefix(column).allSatisfy { $0 == " " || $0 == "-" }
            }
            return ConfigDiagnostic(file: file, line: second.map { $0 + 1 } ?? first, keyPath: "",
                                    message: "\(name) appears twice in one mapping",
                                    hint: "keep one of them (the first is on line \(first))")
        case .reader(let problem, let offset, _, _):
            // The offset counts characters from the start of the text.
            let line = offset.map { yamlLines(String(text.prefix($0))).count } ?? 1
            return ConfigDiagnostic(file: file, line: line, keyPath: "", message: "YAML syntax error: \(problem)",
                                    hint: "remove control characters; the file must be UTF-8 text")
        default:
            return ConfigDiagnostic(file: file, line: 0, keyPath: "", message: "YAML syntax error: \(yaml)")
        }
    }

    /// The text's lines as libyaml numbers them: split at LF, CR, CRLF, NEL, LS and PS.
    static func yamlLines(_ text: String) -> [Substring] {
        var lines: [Substring] = []
        let scalars = text.unicodeScalars
        var start = scalars.startIndex
        var i = start
        while i < scalars.endIndex {
            let c = scalars[i]
            if c == "\n" || c == "\r" || c == "\u{85}" || c == "\u{2028}" || c == "\u{2029}" {
                lines.append(Substring(scalars[start..<i]))
                var next = scalars.index(after: i)
                if c == "\r", next < scalars.endIndex, scalars[next] == "\n" { next = scalars.index(after: next) }
                start = next
                i = next
            } else {
                i = scalars.index(after: i)
            }
        }
        lines.append(Substring(scalars[start..<scalars.endIndex]))
        return lines
    }

    /// "write listen: '[::1]:7000'" when `line` holds an unquoted bracketed IPv6 address, else nil.
    static func unquotedIPv6Advice(in line: Substring) -> String? {
        let chars = Array(line)
        for (i, c) in chars.enumerated() where c == "[" {
            // A quoted address has a quote before its bracket; an unquoted one follows a key, a dash or a flow.
            if let before = chars[..<i].last(where: { $0 != " " && $0 != "\t" }),
               ![":", "-", "[", ",", "{"].contains(before) { continue }
            // Only the characters an address may hold, so that each bracket costs its address's length.
            var close = i + 1
            while close < chars.count, chars[close].isHexDigit || ":. ".contains(chars[close]) { close += 1 }
            guard close < chars.count, chars[close] == "]" else { continue }
            let host = String(chars[(i + 1)..<close]).trimmingSpaces
            guard ConfigValue.parseIPv6(host) != nil else { continue }
            var end = close + 1
            if end < chars.count, chars[end] == ":" {
                end += 1
                while end < chars.count, chars[end].isASCII, chars[end].isNumber { end += 1 }
            }
            var address = "[\(host)]" + String(chars[(close + 1)..<end])
            if !address.hasSuffix("]") && address.hasSuffix(":") { address += "PORT" }
            if address.hasSuffix("]") { address += ":PORT" }
            let key = keyBefore(chars[..<i])
            return "write " + (key.map { "\($0): " } ?? "") + "'\(address)'"
        }
        return nil
    }

    /// The unquoted IPv6 address a node parsed as a one-item list stands for, quoted: `[2001:db8::1]` reads
    /// as a list holding `2001:db8::1`, and `[1::]` as a list holding the mapping `1:`.
    static func unquotedIPv6(_ node: Node) -> String? {
        guard case .sequence(let sequence) = node, sequence.count == 1, let item = sequence.first else { return nil }
        var host: String?
        switch item {
        case .scalar(let scalar) where scalar.style == .plain:
            host = scalar.string
        case .mapping(let mapping) where mapping.count == 1:
            if let (key, value) = mapping.first, case .scalar(let k) = key, case .scalar(let v) = value, v.string.isEmpty {
                host = k.string + ":"
            }
        default:
            break
        }
        guard let host, ConfigValue.parseIPv6(host) != nil else { return nil }
        return "'[\(host)]:PORT'"
    }

    private static func keyBefore(_ prefix: ArraySlice<Character>) -> String? {
        var text = String(prefix).trimmingSpaces
        guard text.hasSuffix(":") else { return nil }
        text.removeLast()
        let name = text.reversed().prefix { $0.isLetter || $0.isNumber || $0 == "_" }
        return name.isEmpty ? nil : String(name.reversed())
    }
}
