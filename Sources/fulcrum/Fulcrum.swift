import ArgumentParser
import Fulcrum
import FulcrumCore
import Logging
#if canImport(Glibc)
import Glibc
#endif

@main
struct FulcrumCommand: ParsableCommand {
    static let version = Engine.version

    static let configuration = CommandConfiguration(
        commandName: "fulcrum",
        abstract: "A layer-4 proxy and load balancer for RPC backends.",
        discussion: """
        Fulcrum accepts TCP connections on the listeners named in a YAML file and relays each one to a \
        backend of the listener's pool. Start with:

          fulcrum check --config examples/quickstart.yaml   # validate and print the plan
          fulcrum run --config examples/quickstart.yaml     # serve until SIGTERM or Ctrl-C
          fulcrum reload --config examples/quickstart.yaml  # validate, then make the running process re-read it
          fulcrum status --config examples/quickstart.yaml  # the running process's pools and backends, from its admin API
        """,
        version: version,
        subcommands: [Run.self, Check.self, Reload.self, Upgrade.self, Status.self, Register.self],
        defaultSubcommand: nil
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: [.short, .long], help: ArgumentHelp("The configuration file.", valueName: "file"))
    var config: String
}

extension FulcrumCommand {
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve the configuration until SIGTERM or SIGINT, then drain and exit.",
            discussion: """
            On the first SIGTERM or SIGINT Fulcrum stops accepting, lets open connections finish for up to \
            drain_timeout, and exits 0; a signal during start-up stops it the same way. A second signal \
            closes every open connection at once and exits with status 1.

            With --upgrade-from, Fulcrum first takes over the listening sockets of the process serving that \
            upgrade_socket (see `fulcrum upgrade`); once its own workers run, that process drains and exits.
            """
        )

        @OptionGroup var options: ConfigOption

        @Option(help: ArgumentHelp("Take over the listening sockets of the running process that serves this upgrade_socket.",
                                   valueName: "path"))
        var upgradeFrom: String?

        @Option(help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error or critical.",
                                   valueName: "level"))
        var logLevel: String = "info"

        func validate() throws {
            guard Logger.Level(rawValue: logLevel) != nil else {
                throw ValidationError("'\(logLevel)' is not a log level; use trace, debug, info, notice, warning, error or critical")
            }
        }

        func run() throws {
            // Until the engine watches them, a stop signal waits instead of killing the process.
            Engine.holdStopSignals()
            let level = Logger.Level(rawValue: logLevel)!
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            let logger = Logger(label: "fulcrum")
            let config: FulcrumConfig
            do {
                config = try ConfigFile.load(path: options.config)
            } catch {
                logger.critical("not starting: the configuration is invalid\n\(error)")
                throw ExitCode(1)
            }
            logger.info("starting", metadata: ["version": "\(FulcrumCommand.version)", "config": "\(options.config)"])
            let status: Int32
            do {
                let engine = Engine(config: config, configPath: options.config, logger: logger)
                engine.upgradeFrom = upgradeFrom
                status = try engine.run()
            } catch {
                let unchanged = upgradeFrom.map { "; the process serving \($0), if any, goes on serving unchanged" } ?? ""
                logger.critical("not starting: \(error)\(unchanged)")
                throw ExitCode(1)
            }
            // Everything is drained and joined: leave without running exit-time destructors of the
            // libraries linked in, which have nothing left to do.
            fflush(nil)
            _exit(status)
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a configuration file and print the plan it resolves to (exit 0 if valid, 1 if not)."
        )

        @OptionGroup var options: ConfigOption

        func run() throws {
            guard let config = loadOrReport(options.config) else { throw ExitCode(1) }
            print("configuration \(options.config) is valid\n")
            print(Plan.describe(config))
        }
    }
}
