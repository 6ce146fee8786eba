import FulcrumCore
import Testing

/// `access_log`: parsing, defaults, errors with line and fix, and what a reload reports.
@Suite struct AccessLogConfigTests {
    static func yaml(_ accessLog: String) -> String {
        """
        \(accessLog)
        listeners:
          - {name: front, listen: 127.0.0.1:0, pool: app}
        pools:
          app: {backends: [127.0.0.1:6379]}
        """
    }

    @Test func offByDefaultAndParsed() throws {
        #expect(try ConfigLoader.load(text: Self.yaml(""), file: "a.yaml").accessLog == nil)
        #expect(try ConfigLoader.load(text: Self.yaml("access_log: off"), file: "a.yaml").accessLog == nil)
        #expect(try ConfigLoader.load(text: Self.yaml("access_log: {path: off, format: json}"), file: "a.yaml").accessLog == nil)
        #expect(try ConfigLoader.load(text: Self.yaml("access_log: {path: stdout}"), file: "a.yaml").accessLog
            == AccessLogConfig(destination: .stdout, format: .logfmt))
        #expect(try ConfigLoader.load(text: Self.yaml("access_log: {path: /var/log/a.log, format: json}"), file: "a.yaml").accessLog
            == AccessLogConfig(destination: .file("/var/log/a.log"), format: .json))
    }

    @Test func errorsNameKeyLineAndFix() {
        func errors(_ line: String) -> [String] {
            do {
                _ = try ConfigLoader.load(text: Self.yaml(line), file: "a.yaml")
                return []
            } catch {
                return error.diagnostics.map { "\($0)" }
            }
        }
        #expect(errors("access_log: {path: stdout, format: xml}")
            == ["a.yaml:1: access_log.format: 'xml' is not an access log format (use json (one JSON object per line) or logfmt (key=value pairs))"])
        #expect(errors("access_log: {format: json}").first?.hasPrefix("a.yaml:1: access_log.path: missing required key 'path'") == true)
        #expect(errors("access_log: {path: /var/log/}").first?.contains("'/var/log/' is not a file path") == true)
        #expect(errors("access_log: {path: stdout, fromat: json}").first?.contains("did you mean 'format'?") == true)
        #expect(errors("access_log: yes").first?.hasPrefix("a.yaml:1: access_log: 'yes' is not an access log setting") == true)
        #expect(errors("pid_file: /run/f.pid\naccess_log: {path: /run/f.pid}").first?.contains("is also the pid_file") == true)
    }

    @Test func reloadReportsTheChange() throws {
        let off = try ConfigLoader.load(text: Self.yaml(""), file: "a.yaml")
        let on = try ConfigLoader.load(text: Self.yaml("access_log: {path: stdout, format: json}"), file: "a.yaml")
        #expect(ConfigDiff(from: off, to: on).changes.map { "\($0)" } == ["access_log: off -> path stdout, format json"])
        #expect(ConfigDiff(from: on, to: on).isEmpty)
        #expect(ConfigDiff(from: off, to: on).restartKeys.isEmpty)
    }
}
