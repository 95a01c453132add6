// Apollo Kotlin 4 code generation for Parley. Paste the `apollo {}` block into your app
// module's build.gradle.kts (with `plugins { id("com.apollographql.apollo") version "4.…" }`)
// and point `parleyKit` at this folder: a git submodule, or a copy refreshed with each API
// version. Apollo Kotlin reads a schema only from .graphqls, .json or .sdl files, which is
// why schema.graphqls sits beside schema.graphql (the same text).
val parleyKit = file("parley/frontend_schema")

apollo {
    service("parley") {
        packageName.set("com.example.parley.graphql")
        // The operations (and their fragments) every Parley client needs.
        srcDir(parleyKit.resolve("operations"))
        schemaFiles.from(parleyKit.resolve("schema.graphqls"))
        // DateTime is an ISO 8601 string with an offset, e.g. "2026-11-28T14:11:18.123456+00:00".
        // Kept a String so the generated code needs no adapter. For kotlinx.datetime.Instant,
        // map it to "kotlinx.datetime.Instant" with the Instant adapter of Apollo's adapters
        // artifact instead.
        mapScalar("DateTime", "kotlin.String")
    }
}
