import Yams

extension ConfigLoader {
    static let adminKeys = ["listen", "token_file", "token_env", "token"]

    /// `admin: {listen: 127.0.0.1:9901, token_file: PATH}`: at most one token source; a token is required
    /// unless the admin listens on a loopback address; the address may not be a listener's.
    static func buildAdmin(_ node: Node, listeners: [FulcrumConfig.Listener], _ r: inout YAMLReader) -> FulcrumConfig.Admin? {
        guard let f = r.fields(node, "admin", known: adminKeys) else { return nil }
        guard let listenNode = f["listen"] else {
            r.report(f.node, "admin.listen", "missing required key 'listen'",
                     hint: "add e.g. listen: 127.0.0.1:9901 (loopback; any other address needs a token)")
            return nil
        }
        guard let address = r.address(listenNode, f.path("listen"), allowPortZero: true) else { return nil }
        var tokens: [(String, FulcrumConfig.Admin.Token, Node)] = []
        if let node = f["token_file"], let path = r.scalar(node, f.path("token_file"), expecting: "a file path") {
            if path.isEmpty || path.hasSuffix("/") || path.contains("\0") {
                r.report(node, f.path("token_file"), "'\(path)' is not a file path",
                         hint: "name a file that holds the token, e.g. token_file: /etc/fulcrum/admin.token")
            } else {
                tokens.append(("token_file", .file(path), node))
            }
        }
        if let node = f["token_env"], let name = r.scalar(node, f.path("token_env"), expecting: "an environment variable name") {
            if name.isEmpty || !name.allSatisfy({ $0 == "_" || $0.isASCII && ($0.isLetter || $0.isNumber) }) {
                r.report(node, f.path("token_env"), "'\(name)' is not an environment variable name",
                         hint: "use letters, digits and '_', e.g. token_env: FULCRUM_ADMIN_TOKEN")
            } else {
                tokens.append(("token_env", .environment(name), node))
            }
        }
        if let node = f["token"], let text = r.scalar(node, f.path("token"), expecting: "a token") {
            if text.count < 16 {
                r.report(node, f.path("token"), "the token is \(text.count) characters long; use at least 16",
                         hint: "prefer token_file or token_env, which keep the token out of the configuration")
            } else {
                tokens.append(("token", .literal(text), node))
            }
        }
        if tokens.count > 1 {
            r.report(tokens[1].2, f.path(tokens[1].0), "admin takes one token source, got \(tokens.map(\.0).joined(separator: " and "))",
                     hint: "keep one of token_file, token_env and token")
            return nil
        }
        let admin = FulcrumConfig.Admin(address: address, token: tokens.first?.1)
        if admin.token == nil && !admin.isLoopback {
            r.report(listenNode, f.path("listen"), "the admin API listens on \(address), which is not a loopback address, without a token",
                     hint: "set token_file (or token_env) so that changes need it, or listen on 127.0.0.1")
            return nil
        }
        if address.port != 0, let clash = listeners.first(where: { $0.address == address || overlap($0.address, address) }) {
            r.report(listenNode, f.path("listen"), "\(address) is also the address of listener '\(clash.name)'",
                     hint: "give the admin API its own port")
            return nil
        }
        return admin
    }
}
