import ArgumentParser
import FulcrumCore
#if canImport(Glibc)
import Glibc
#endif

extension FulcrumCommand {
    /// `fulcrum status`: the admin API's `GET /status` as a terminal table.
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the running fulcrum's listeners, pools and backends (state, weight, connections, check and breaker reasons).",
            discussion: """
            Reads GET /status from the admin API (admin: {listen: ...} in the configuration). The address is \
            --admin, else the admin.listen of --config, else 127.0.0.1:9901. States are colored when standard \
            output is a terminal. Exit 0 when the admin API answered, 1 when it could not be reached or \
            answered with an error.
            """
        )

        static let defaultAdmin = "127.0.0.1:9901"

        @Option(help: ArgumentHelp("The admin API's address (default: the --config file's admin.listen, else \(defaultAdmin)).",
                                   valueName: "address"))
        var admin: String?

        @Option(name: [.short, .long], help: ArgumentHelp("A configuration file whose admin.listen names the address.",
                                                          valueName: "file"))
        var config: String?

        @Option(help: ArgumentHelp("Seconds to wait for the answer.", valueName: "seconds"))
        var timeout: Double = 5

        func validate() throws {
            guard timeout > 0, timeout <= 600 else { throw ValidationError("--timeout must be from 0 to 600 seconds, not \(timeout)") }
            if let admin, case .failure = ConfigValue.address(admin) {
                throw ValidationError("--admin '\(admin)' is not an address; write e.g. 127.0.0.1:9901 or '[::1]:9901'")
            }
        }

        func run() throws {
            let address: SocketAddress
            do {
                address = try target()
            } catch {
                printError("fulcrum status: \(error)")
                throw ExitCode(1)
            }
            let client = AdminClient(address: address, timeout: timeout)
            let status: JSON
            do {
                let response = try client.get("/status")
                guard response.status == 200 else {
                    let detail = (try? JSON.parse(response.body))?["error"].flatMap { if case .string(let s) = $0 { s } else { nil } }
                    throw AdminClient.Failure(description: "the admin API at \(address) answered \(response.status)"
                        + (detail.map { ": \($0)" } ?? ""))
                }
                status = try JSON.parse(response.body)
            } catch let error as JSON.ParseError {
                printError("fulcrum status: the answer from \(address) is not JSON: \(error)")
                throw ExitCode(1)
            } catch {
                printError("fulcrum status: \(error)")
                throw ExitCode(1)
            }
            // "For how long" is measured against the proxy's own clock (its `now`), not this host's.
            var now = 0.0
            if case .string(let text)? = status["fulcrum"]?["now"] { now = StatusTable.parseTime(text) ?? 0 }
            print(StatusTable(status: status, color: isatty(STDOUT_FILENO) == 1, now: now).text, terminator: "")
        }

        /// `--admin`, else the file's `admin.listen`, else the default; a wildcard address is reached on loopback.
        private func target() throws(AdminClient.Failure) -> SocketAddress {
            var address: SocketAddress
            if let admin, case .success(let parsed) = ConfigValue.address(admin) {
                address = parsed
            } else if let config {
                guard let loaded = loadOrReport(config) else {
                    throw AdminClient.Failure(description: "cannot read the admin address from \(config) (see the errors above)")
                }
                guard let settings = loaded.admin else {
                    throw AdminClient.Failure(description: "\(config) has no admin API (add admin: {listen: \(Self.defaultAdmin)}, or pass --admin)")
                }
                address = settings.address
            } else {
                guard case .success(let parsed) = ConfigValue.address(Self.defaultAdmin) else { fatalError("the default address parses") }
                address = parsed
            }
            if address.port == 0 {
                throw AdminClient.Failure(description: "the admin API listens on port 0 (a free port picked at start); pass --admin with the port its log names")
            }
            switch address {
            case .ipv4((0, 0, 0, 0), let port): address = .ipv4((127, 0, 0, 1), port: port)
            case .ipv6(let bytes, let port) where bytes.allSatisfy({ $0 == 0 }):
                address = .ipv6([UInt8](repeating: 0, count: 15) + [1], port: port)
            default: break
            }
            return address
        }
    }
}
