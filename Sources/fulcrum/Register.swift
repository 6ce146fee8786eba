import ArgumentParser
import Fulcrum
import FulcrumCore
import Logging
#if canImport(Glibc)
import Glibc
#endif

extension FulcrumCommand {
    /// `fulcrum register`: the self-registration sidecar.
    struct Register: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Keep a backend registered in etcd while its health check passes (a sidecar beside the backend).",
            discussion: """
            Checks the backend at --address with the proxy's own checks. While the check passes, the key \
            PREFIX+NAME holds {"address", "weight", "priority", "state": "enabled"} under an etcd lease of \
            --ttl, renewed every third of it; when the check fails (--fall in a row) the lease is revoked and \
            the key is gone at once; when it passes again (--rise in a row) the key comes back. If this \
            process dies, the key goes when its lease expires. On SIGTERM or SIGINT the key says \
            "state": "drain" for --drain-wait, then it is deleted, and the command exits 0.

            Example, beside a Redis on 10.0.0.5:

              fulcrum register --etcd http://10.0.0.1:2379 \\
                --prefix /fulcrum/pools/redis/ --address 10.0.0.5:6379 \\
                --check send_expect --send 'PING\\r\\n' --expect +PONG

            etcd is reached over plain HTTP (its v3 JSON gateway); TLS and etcd authentication are not \
            supported yet.
            """
        )

        @Option(help: ArgumentHelp("etcd's client URLs, comma-separated, tried in order.", valueName: "url[,url]"))
        var etcd: String = ""

        @Option(help: ArgumentHelp("The key prefix the proxy's pool watches, ending with '/'.", valueName: "prefix"))
        var prefix: String = ""

        @Option(help: ArgumentHelp("The backend's IP address and port, as clients reach it.", valueName: "ip:port"))
        var address: String = ""

        @Option(help: ArgumentHelp("The key's name under the prefix (default: the address).", valueName: "name"))
        var key: String?

        @Option(help: ArgumentHelp("The backend's weight, 1 to 1000.", valueName: "n"))
        var weight: Int = 1

        @Option(help: ArgumentHelp("The backend's priority, 0 (preferred) to 100.", valueName: "n"))
        var priority: Int = 0

        @Option(help: ArgumentHelp("The lease's TTL, whole seconds, at least 2s.", valueName: "duration"))
        var ttl: String = "3s"

        @Option(help: ArgumentHelp("How long the key says drain before it is deleted, on SIGTERM or SIGINT.", valueName: "duration"))
        var drainWait: String = "2s"

        @Option(help: ArgumentHelp("The check: tcp, send_expect or http.", valueName: "kind"))
        var check: String = "tcp"

        @Option(help: ArgumentHelp("send_expect: bytes to send, with \\r \\n \\t \\0 \\xHH escapes.", valueName: "text"))
        var send: String?

        @Option(help: ArgumentHelp("send_expect: bytes to send, in hex.", valueName: "hex"))
        var sendHex: String?

        @Option(help: ArgumentHelp("send_expect: the reply must start with this (escapes as --send).", valueName: "text"))
        var expect: String?

        @Option(help: ArgumentHelp("send_expect: the reply must match this regular expression.", valueName: "regex"))
        var expectRegex: String?

        @Option(help: ArgumentHelp("http: the path to GET (default /).", valueName: "path"))
        var httpPath: String?

        @Option(help: ArgumentHelp("http: the Host header (default: the address).", valueName: "host"))
        var httpHost: String?

        @Option(help: ArgumentHelp("http: statuses that pass (default 200-399), e.g. 200,204 or 200-299.", valueName: "list"))
        var httpStatus: String?

        @Option(help: ArgumentHelp("Time between checks.", valueName: "duration"))
        var interval: String = "1s"

        @Option(help: ArgumentHelp("How long one check may take.", valueName: "duration"))
        var timeout: String = "1s"

        @Option(help: ArgumentHelp("Passing checks in a row that register a backend that was down.", valueName: "n"))
        var rise: Int = 2

        @Option(help: ArgumentHelp("Failing checks in a row that remove the key.", valueName: "n"))
        var fall: Int = 2

        @Option(help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error or critical.", valueName: "level"))
        var logLevel: String = "info"

        var options: Registration.Options {
            var options = Registration.Options()
            options.etcd = etcd
            options.prefix = prefix
            options.address = address
            options.key = key
            options.weight = weight
            options.priority = priority
            options.ttl = ttl
            options.drainWait = drainWait
            options.check = check
            options.send = send
            options.sendHex = sendHex
            options.expect = expect
            options.expectRegex = expectRegex
            options.httpPath = httpPath
            options.httpHost = httpHost
            options.httpStatus = httpStatus
            options.interval = interval
            options.timeout = timeout
            options.rise = rise
            options.fall = fall
            return options
        }

        func validate() throws {
            var problems: [String] = []
            if Logger.Level(rawValue: logLevel) == nil {
                problems.append("--log-level \(logLevel) is not a log level; use trace, debug, info, notice, warning, error or critical")
            }
            if case .failure(let found) = Registration.parse(options) { problems += found.messages }
            guard problems.isEmpty else { throw ValidationError(problems.joined(separator: "\n")) }
        }

        func run() throws {
            guard case .success(let registration) = Registration.parse(options) else { throw ExitCode(2) }
            let level = Logger.Level(rawValue: logLevel)!
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            let status = Registrar.run(registration, logger: Logger(label: "fulcrum-register"))
            fflush(nil)
            _exit(status)
        }
    }
}
