// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "etl-job",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "etl-job", targets: ["etl-job"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // Operations (issue 37): the engine counts through swift-metrics; the executable alone
        // exports Prometheus' text format over HTTP (swift-nio) when --metrics-address is given.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // C libraries: a module map and a one-line shim each, nothing else.
        .systemLibrary(
            name: "CMongoc", pkgConfig: "libmongoc-1.0",
            providers: [.apt(["libmongoc-dev", "libbson-dev"])]),
        .systemLibrary(
            name: "CLMDB", pkgConfig: "lmdb",
            providers: [.apt(["liblmdb-dev"])]),
        .systemLibrary(
            name: "CLibPQ", pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]),
        .systemLibrary(
            name: "CZlib", pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]),
        // SHA-256, for the digest of a source file's head.
        .systemLibrary(
            name: "CCrypto", pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]),
        // glibc's allocator knobs (mallopt), for the executable only.
        .systemLibrary(name: "CMalloc"),
        // The commit a release build was made from (scripts/build links it in).
        .target(name: "CBuildStamp"),

        // Pure Swift: batching, worker pools, the manager, metrics.
        .target(name: "ETLCore"),

        // Thin owners of the C handles.
        .target(name: "Queue", dependencies: ["CLMDB", "CZlib"]),
        .target(name: "Mongo", dependencies: ["CMongoc", "CZlib", "CCrypto", "ETLCore"]),
        .target(name: "Postgres", dependencies: ["CLibPQ", "ETLCore"]),

        // The durable engine: extract, queue, load with checkpoints, recovery, migrations,
        // verify, status. Generic over a DocumentMapping; it knows no pipeline's tables.
        .target(
            name: "DurableETL",
            dependencies: [
                "ETLCore", "Queue", "Mongo", "Postgres",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),

        // Mapping files: any collection described in JSON, run by the engine; `init` infers them.
        .target(name: "Mappings", dependencies: ["DurableETL", "Mongo", "Postgres"]),

        // The users pipeline: one DocumentMapping (BSON -> 15 tables).
        .target(name: "Users", dependencies: ["DurableETL", "Mongo", "Postgres"]),
        // The users dataset generator and bad-input corpus (for `seed` and the tests).
        .target(name: "UsersFixtures", dependencies: ["Mongo"]),

        .executableTarget(
            name: "etl-job",
            dependencies: [
                "DurableETL", "Mappings", "Users", "UsersFixtures", "ETLCore", "Queue", "Mongo", "Postgres", "CMalloc", "CBuildStamp",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),

        // Test helpers shared by every test target: services, sandboxes, processes.
        .target(
            name: "TestSupport",
            dependencies: ["Mongo", "Postgres"],
            path: "Tests/TestSupport"),
        // A pipeline written against the engine alone (docs/design/writing-a-pipeline.md's example), and a small
        // program that runs it, which the engine tests kill and resume. Neither may depend on Users.
        .target(name: "NotesPipeline", dependencies: ["DurableETL", "Mongo", "Postgres"], path: "Tests/NotesPipeline"),
        .executableTarget(
            name: "notes-pipeline",
            dependencies: ["NotesPipeline", "DurableETL", "ETLCore", .product(name: "Logging", package: "swift-log")],
            path: "Tests/NotesPipelineRunner"),

        .testTarget(name: "ETLCoreTests", dependencies: ["ETLCore", "Queue", "DurableETL", "Users", "UsersFixtures", "Mongo", "TestSupport"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["DurableETL", "Users", "UsersFixtures", "Queue", "Mongo", "Postgres", "TestSupport"]),
        // The docs cannot drift: their command lines go through the executable's own parser
        // (@testable import of the executable target), their links resolve, the generated
        // reference is current, and the README's tour runs as written.
        .testTarget(
            name: "DocsTests",
            dependencies: ["etl-job", "TestSupport", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(
            name: "EngineTests",
            dependencies: [
                "DurableETL", "Queue", "Mongo", "Postgres", "ETLCore", "TestSupport", "NotesPipeline", "notes-pipeline",
                .product(name: "Logging", package: "swift-log"),
            ]),
    ]
)
