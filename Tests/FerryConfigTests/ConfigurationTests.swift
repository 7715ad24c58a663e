import FerryConfig
import FerryStorage
import Foundation
import Testing

@Suite struct TOMLParserTests {
    @Test func readsWhatFerryConfigurationsUse() throws {
        let document = try TOMLParser.parse("""
            # comment
            lfs = "/opt/lustre/bin/lfs"   # trailing comment
            margin = 5
            big = 1_000_000
            ratio = 0.05
            enabled = true
            quoted = "tab\\tand \\"quotes\\" and \\u00e9"
            literal = 'C:\\raw\\path'
            list = [ "a", 'b',
              "c", ]  # multi-line array

            [server]
            listen = "127.0.0.1:8080"

            [[roots]]
            path = "/lustre/projects"
            backend = "lustre"

            [[roots]]
            path = "/scratch"
            "odd key" = 1
            """)
        #expect(document["lfs"] == .string("/opt/lustre/bin/lfs"))
        #expect(document["margin"] == .integer(5) && document["big"] == .integer(1_000_000))
        #expect(document["ratio"] == .float(0.05) && document["enabled"] == .boolean(true))
        #expect(document["quoted"] == .string("tab\tand \"quotes\" and é"))
        #expect(document["literal"] == .string("C:\\raw\\path"))
        #expect(document["list"] == .array([.string("a"), .string("b"), .string("c")]))
        #expect(document["server"]?.table?["listen"] == .string("127.0.0.1:8080"))
        let roots = try #require(document["roots"]?.array)
        #expect(roots.count == 2)
        #expect(roots[1].table?["odd key"] == .integer(1))
    }

    @Test(arguments: [
        ("a = 1\na = 2", 2, "defined twice"),
        ("[t]\n[t]", 2, "defined twice"),
        ("a = \"open", 1, "unterminated"),
        ("a = nope", 1, "cannot read nope"),
        ("a = 1 b", 1, "unexpected text"),
        ("= 1", 1, "expected a key"),
        ("a = { x = 1 }", 1, "inline tables"),
        ("x = 1\n[x]", 2, "not a table"),
        ("a = [1, 2", 1, "expected , or ]"),
        ("a = \"\\q\"", 1, "unknown escape"),
        // A table header cannot reopen an array of tables (its keys went into the last root).
        ("[[roots]]\npath = \"/a\"\n[roots]\nname = \"x\"", 3, "cannot reopen"),
        ("a = 1__2", 1, "underscore"),
        ("a = _1", 1, "underscore"),
        ("a = 1_", 1, "underscore"),
        ("a = 007", 1, "leading zero"),
        ("a = .5", 1, "both sides"),
        ("a = 5.", 1, "both sides"),
        ("a = \"tab\tok but bell\u{7}\"", 1, "control character"),
        ("a = 'nul\u{0}'", 1, "control character"),
        ("a = '''x'''", 1, "multi-line strings"),
        ("a = 9223372036854775808", 1, "out of range"),
        ("a = 0xFFFFFFFFFFFFFFFFF", 1, "out of range"),
        ("a = 0x-1", 1, "base-16 digits only"),
        ("a = 0x1.8p3", 1, "base-16 digits only"),
        ("a = 0b102", 1, "base-2 digits only"),
        ("a = 01.5", 1, "leading zero"),
        ("a = 1e_5", 1, "underscore"),
        ("a = [1]\n[[a]]", 2, "not an array of tables"),
        // An empty array set with = is a static array too, not one [[a]] may extend.
        ("a = []\n[[a]]", 2, "not an array of tables"),
        ("a = \"\\u+041\"", 1, "bad \\u escape"),
        ("a = 05e3", 1, "leading zero"),
    ])
    func errorsNameTheLine(text: String, line: Int, message: String) {
        let error = #expect(throws: TOMLError.self) { try TOMLParser.parse(text) }
        #expect(error?.line == line, "\(text)")
        #expect(error?.message.contains(message) == true, "\(String(describing: error))")
    }
}

@Suite struct TOMLSpecTests {
    /// What TOML 1.0 allows and Ferry's parser once refused: binary integers, a sub-table of each
    /// element of an array of tables, a leading byte-order mark.
    @Test func validTOMLThatWasRefused() throws {
        #expect(try TOMLParser.parse("a = 0b101\nb = 0o17\nc = 0xff_ff")["a"] == .integer(5))
        let tables = try TOMLParser.parse("[[a]]\n[a.b]\nx = 1\n[[a]]\n[a.b]\nx = 2")
        #expect(tables["a"]?.array?.compactMap { $0.table?["b"]?.table?["x"] } == [.integer(1), .integer(2)])
        #expect(try TOMLParser.parse("\u{FEFF}a = 1")["a"] == .integer(1))
        #expect(try TOMLParser.parse("a = 1.5e3")["a"] == .float(1500))
        #expect(try TOMLParser.parse("a = 0e3\nb = 0.5e1")["b"] == .float(5))
        #expect(try TOMLParser.parse("a = \"\\u0041\\U0001F600\"")["a"] == .string("A\u{1F600}"))
    }
}

@Suite struct ConfigurationTests {
    @Test func rootsChooseTheBackendByDeepestPrefix() throws {
        let configuration = try FerryConfiguration.parse("""
            lfs = "/usr/bin/lfs"
            database = "postgres://ferry@db/ferry"
            [[roots]]
            path = "/data"
            name = "Data"
            backend = "xfs"
            [[roots]]
            path = "/data/lustre/"
            backend = "lustre"
            strategy = "relink"
            """)
        #expect(configuration.lfsPath == "/usr/bin/lfs")
        #expect(configuration.database == "postgres://ferry@db/ferry")
        #expect(configuration.roots == [
            .init(path: "/data", name: "Data", backend: .xfs), .init(path: "/data/lustre", backend: .lustre, strategy: "relink"),
        ])
        #expect(configuration.backend(for: "/data/lustre/p1/x") == .lustre)
        #expect(configuration.backend(for: "/data/lustre") == .lustre)
        #expect(configuration.backend(for: "/data/lustreX") == .xfs)
        #expect(configuration.backend(for: "/elsewhere") == .auto)
    }

    /// A root configured through a symlink, or a path asked through one: the same root either way.
    @Test func rootsAreFoundThroughEitherSpellingOfAPath() throws {
        let directory = "/tmp/ferry-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let real = URL(fileURLWithPath: directory).resolvingSymlinksInPath().path + "/lustre-projects"
        try FileManager.default.createDirectory(atPath: real + "/p1", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: directory + "/projects", withDestinationPath: real)
        let throughLink = try FerryConfiguration.parse("[[roots]]\npath = \"\(directory)/projects\"\nbackend = \"lustre\"\nstrategy = \"relink\"\n")
        #expect(throughLink.backend(for: real + "/p1") == .lustre)
        #expect(throughLink.backend(for: directory + "/projects/p1") == .lustre)
        let byRealPath = try FerryConfiguration.parse("[[roots]]\npath = \"\(real)\"\nbackend = \"lustre\"\nstrategy = \"relink\"\n")
        #expect(byRealPath.root(containing: directory + "/projects/p1", resolvingSymlinks: true)?.strategy == "relink")
        #expect(byRealPath.root(containing: real + "/p1", resolvingSymlinks: true)?.strategy == "relink")
        #expect(byRealPath.root(containing: directory + "/elsewhere", resolvingSymlinks: true) == nil)
        // Without resolving (the server: no filesystem access), only the spelling as written.
        #expect(byRealPath.root(containing: directory + "/projects/p1") == nil)
        // The deepest by the spelling that matched: a short link /h into a longer root's tree
        // (/home, a link to /lustre/fs1/home, beside /lustre/fs1) is the deeper root.
        let resolved = URL(fileURLWithPath: directory).resolvingSymlinksInPath().path
        try FileManager.default.createDirectory(atPath: resolved + "/a-long-filesystem-name/home/x", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: directory + "/h", withDestinationPath: resolved + "/a-long-filesystem-name/home")
        let nested = try FerryConfiguration.parse("""
            [[roots]]
            path = "\(directory)/h"
            strategy = "copy"
            [[roots]]
            path = "\(resolved)/a-long-filesystem-name"
            strategy = "relink"
            """)
        #expect(nested.root(containing: directory + "/h/x", resolvingSymlinks: true)?.strategy == "copy")
        #expect(nested.root(containing: resolved + "/a-long-filesystem-name/home/x", resolvingSymlinks: true)?.strategy == "copy")
    }

    @Test func proxyAddressesAreComparedInOneForm() throws {
        let settings = try FerryConfiguration.parse("[auth]\nproxy_addresses = [\"::ffff:127.0.0.1\", \"0:0::1\"]").serve
        #expect(settings.proxyAddresses == ["127.0.0.1", "::1"])
        #expect(ServeSettings.canonicalAddress("::FFFF:10.1.2.3") == "10.1.2.3")
        #expect(ServeSettings.canonicalAddress("example.org") == nil)
        #expect(ServeSettings.isHeaderName("X-Remote-User") && !ServeSettings.isHeaderName("X-User:") && !ServeSettings.isHeaderName(""))
    }

    @Test func mistakesAreErrorsNotIgnored() {
        for text in ["lsf = \"typo\"", "[[roots]]\npath = \"relative\"", "[[roots]]\npath = \"/x\"\nbackend = \"zfs\"",
                     "[[roots]]\npath = \"/x\"\ncolour = \"red\"", "lfs = 3", "[[roots]]\npath = \"/x\"\nstrategy = \"teleport\"",
                     // A proxy header that is no header name was another header's (X-Remote-User);
                     // addresses that are names or networks never matched; a listen address is checked at once.
                     "[auth]\nproxy_header = \"X Remote User\"", "[auth]\nproxy_addresses = [\"localhost\"]",
                     "[auth]\nproxy_addresses = [\"10.0.0.0/8\"]", "listen = \"localhost\"", "workers = 100000"] {
            #expect(throws: (any Error).self, "\(text)") { try FerryConfiguration.parse(text) }
        }
    }

    /// A root is compared as the server normalises request paths: repeated and trailing slashes
    /// go; `.` and `..` and a root named twice are refused, in the file and in `FERRY_ROOTS`.
    @Test func rootsAreNormalAndDistinct() throws {
        let configuration = try FerryConfiguration.parse("[[roots]]\npath = \"//data//projects/\"\n[[roots]]\npath = \"/\"")
        #expect(configuration.roots.map(\.path) == ["/data/projects", "/"])
        for text in ["[[roots]]\npath = \"/data/./projects\"", "[[roots]]\npath = \"/data/../etc\"",
                     "[[roots]]\npath = \"/data\"\n[[roots]]\npath = \"/data/\"\nbackend = \"xfs\""] {
            let error = #expect(throws: FerryConfiguration.Error.self, "\(text)") { try FerryConfiguration.parse(text) }
            #expect(error?.message.contains("/data") == true, "\(String(describing: error))")
        }
        let environment = try FerryConfiguration().applyingEnvironment(["FERRY_ROOTS": "Data=/data//x/,/y"])
        #expect(environment.roots.map(\.path) == ["/data/x", "/y"])
        for roots in ["/a/../b", "/a,/a/"] {
            #expect(throws: FerryConfiguration.Error.self, "\(roots)") { try FerryConfiguration().applyingEnvironment(["FERRY_ROOTS": roots]) }
        }
    }

    /// An empty `lfs` setting is refused, and an empty `--lfs` or `FERRY_LFS` is unset (a systemd
    /// `Environment=FERRY_LFS=` line must not hide the configured program).
    @Test func anEmptyLfsIsUnset() throws {
        #expect(throws: FerryConfiguration.Error.self) { try FerryConfiguration.parse("lfs = \"\"") }
        let configured = FerryConfiguration(lfsPath: "/opt/lustre/bin/lfs")
        #expect(configured.lfsProgram(nil, environment: ["FERRY_LFS": ""]) == "/opt/lustre/bin/lfs")
        #expect(configured.lfsProgram("", environment: [:]) == "/opt/lustre/bin/lfs")
        #expect(configured.lfsProgram(nil, environment: ["FERRY_LFS": "/x/lfs"]) == "/x/lfs")
        #expect(configured.lfsProgram("/y/lfs", environment: ["FERRY_LFS": "/x/lfs"]) == "/y/lfs")
        #expect(FerryConfiguration().lfsProgram(nil, environment: ["FERRY_LFS": ""]) == nil)
        #expect(try FerryConfiguration(lfsPath: "/opt/lfs").applyingEnvironment(["FERRY_LFS": ""]).lfsPath == "/opt/lfs")
    }

    @Test func locateFollowsFlagThenEnvironmentThenDefaults() throws {
        #expect(FerryConfiguration.locate(explicit: "/x.toml", environment: ["FERRY_CONFIG": "/y.toml"]) == "/x.toml")
        #expect(FerryConfiguration.locate(explicit: nil, environment: ["FERRY_CONFIG": "/y.toml"]) == "/y.toml")
        let home = NSTemporaryDirectory() + "ferry-config-\(getpid())"
        try FileManager.default.createDirectory(atPath: home + "/ferry", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: home) }
        try "".write(toFile: home + "/ferry/ferry.toml", atomically: true, encoding: .utf8)
        #expect(FerryConfiguration.locate(explicit: nil, environment: ["XDG_CONFIG_HOME": home]) == home + "/ferry/ferry.toml")
        // An empty XDG_CONFIG_HOME is unset: $HOME/.config, not /ferry/ferry.toml.
        try FileManager.default.createDirectory(atPath: home + "/.config/ferry", withIntermediateDirectories: true)
        try "".write(toFile: home + "/.config/ferry/ferry.toml", atomically: true, encoding: .utf8)
        #expect(FerryConfiguration.locate(explicit: nil, environment: ["XDG_CONFIG_HOME": "", "HOME": home]) == home + "/.config/ferry/ferry.toml")
        let error = #expect(throws: FerryConfiguration.Error.self) { try FerryConfiguration.load(file: home + "/missing.toml") }
        #expect(error?.description.contains("cannot be read") == true)
    }
}
