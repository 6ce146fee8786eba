import FulcrumCore
import Testing

@Suite struct JSONTests {
    @Test func writesCompactlyInTheGivenOrderAndEscapes() {
        let value = JSON.object([
            "b": .int(-3), "a": .array([.bool(true), .null, .double(0.25), .double(2.0)]),
            "text": .string("quote \" back \\ line\n tab\t <tag> \u{1}"),
        ])
        #expect(value.text == #"{"b":-3,"a":[true,null,0.25,2],"text":"quote \" back \\ line\n tab\t \u003ctag> \u0001"}"#)
        #expect(JSON.double(.infinity).text == "null")
    }

    @Test func parsesWhatItWritesAndStrictJSON() throws {
        let text = #"{"weight": 5, "name": "a\u00e9\ud83d\ude00", "list": [1, -2.5e3, false, null], "nested": {"x": {}}}"#
        let value = try JSON.parse(Array(text.utf8))
        #expect(value["weight"] == .int(5))
        #expect(value["name"] == .string("aé😀"))
        #expect(value["list"] == .array([.int(1), .double(-2500), .bool(false), .null]))
        #expect(value["nested"]?["x"] == .object([]))
        #expect(try JSON.parse(Array(value.text.utf8)).text == value.text, "what it writes reads back the same")
    }

    @Test(arguments: ["", "{", "{\"a\" 1}", "{a: 1}", "[1,]", "[1 2]", "01", "1.", "-", "\"\u{1}\"", "\"\\x\"",
                      "\"\\ud800\"", "tru", "1 2", "{\"a\":1,}", String(repeating: "[", count: 100) + String(repeating: "]", count: 100)])
    func refusesWhatIsNotJSON(_ text: String) {
        #expect(throws: JSON.ParseError.self) { try JSON.parse(Array(text.utf8)) }
    }

    @Test func refusesInvalidUTF8() {
        #expect(throws: JSON.ParseError.self) { try JSON.parse([0x22, 0xFF, 0x22]) }
    }
}
