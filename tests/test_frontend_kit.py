"""The app teams' kit in frontend_schema/ is complete and current.

Its operations validate against the exported schema and pass the server's own query
limits (as Apollo sends them, with `__typename` added), every root field has one, and
they carry a conversation on a running server; the TypeScript types generated from them
are not stale, the Apollo Kotlin schema copy matches, and the Apollo iOS and Kotlin
configurations name files that exist. The TypeScript check runs the pinned code generator
with Node: when Node or the kit's node_modules is missing it fails (never skips) and says
what to run.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLSchema,
    GraphQLUnionType,
    NameNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    Visitor,
    build_schema,
    parse,
    print_ast,
    specified_rules,
    validate,
    visit,
)
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter

from graph.cost import cost_limit_rule, operation_cost
from infra.settings import Settings
from resolvers.accounts import MAX_SEARCH_PAGE
from resolvers.conversations import MAX_CONVERSATIONS_PAGE, MAX_MEMBERS_PAGE
from resolvers.events import MAX_PENDING_PAGE
from tests.support.client import HttpClient, Json, ws_connect
from tests.support.servers import ThreadServer

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "frontend_schema"
SCHEMA = KIT / "schema.graphql"
OPERATIONS = KIT / "operations"
CODEGEN_BIN = KIT / "node_modules" / ".bin" / "graphql-codegen"
INSTALL_HINT = "run `frontend_schema/install` (scripts/check runs it)"


def _definitions() -> Iterator[tuple[Path, OperationDefinitionNode | FragmentDefinitionNode]]:
    for path in sorted(OPERATIONS.glob("*.graphql")):
        for definition in parse(path.read_text()).definitions:
            assert isinstance(definition, (OperationDefinitionNode, FragmentDefinitionNode)), (
                f"{path.name}: only operations and fragments belong in operations/"
            )
            yield path, definition


def _operations() -> dict[str, OperationDefinitionNode]:
    found: dict[str, OperationDefinitionNode] = {}
    for path, definition in _definitions():
        if isinstance(definition, OperationDefinitionNode):
            assert definition.name is not None, f"{path.name}: an operation without a name"
            found[definition.name.value] = definition
    return found


def _fragments() -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for _, d in _definitions() if isinstance(d, FragmentDefinitionNode)}


def _spreads(node: OperationDefinitionNode | FragmentDefinitionNode) -> set[str]:
    names: set[str] = set()

    class Spreads(Visitor):
        def enter_fragment_spread(self, spread: FragmentSpreadNode, *_args: object) -> None:
            names.add(spread.name.value)

    visit(node, Spreads())
    return names


def _document(operation: OperationDefinitionNode, fragments: dict[str, FragmentDefinitionNode]) -> DocumentNode:
    """The operation with every fragment it uses, directly or not: what a client sends."""
    used: dict[str, FragmentDefinitionNode] = {}
    pending = _spreads(operation)
    while pending:
        name = pending.pop()
        if name in used or name not in fragments:  # an unknown one is left for validation to report
            continue
        used[name] = fragments[name]
        pending |= _spreads(fragments[name])
    return DocumentNode(definitions=(operation, *(used[name] for name in sorted(used))))


class _WithTypename(Visitor):
    """Adds `__typename` to every selection set but the operation's own, as Apollo's clients do."""

    def leave_selection_set(
        self, node: SelectionSetNode, _key: object, parent: object, *_args: object
    ) -> SelectionSetNode | None:
        if isinstance(parent, OperationDefinitionNode):  # a subscription selects exactly one root field
            return None
        if any(isinstance(s, FieldNode) and s.name.value == "__typename" for s in node.selections):
            return None
        return SelectionSetNode(selections=(*node.selections, FieldNode(name=NameNode(value="__typename"))))


def _sent(name: str) -> str:
    """The text a client sends for the kit's operation `name`: with its fragments and `__typename`."""
    document = visit(_document(_operations()[name], _fragments()), _WithTypename())
    return print_ast(document)


def _schema() -> GraphQLSchema:
    return build_schema(SCHEMA.read_text())


def test_every_operation_validates_against_the_schema() -> None:
    schema, fragments = _schema(), _fragments()
    operations = _operations()
    assert operations, "frontend_schema/operations holds no operation"
    for name, operation in operations.items():
        errors = validate(schema, _document(operation, fragments))
        assert not errors, f"operation {name}: {[e.message for e in errors]}"


def test_operation_and_fragment_names_are_unique() -> None:
    # Apollo iOS and Kotlin generate one class per name: a duplicate fails their build.
    names = [d.name.value for _, d in _definitions() if d.name is not None]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"defined more than once in frontend_schema/operations: {duplicates}"


def test_every_fragment_is_used() -> None:
    operations, fragments = _operations(), _fragments()
    used = {
        d.name.value
        for operation in operations.values()
        for d in _document(operation, fragments).definitions
        if isinstance(d, FragmentDefinitionNode)
    }
    unused = sorted(set(fragments) - used)
    assert not unused, f"fragments no operation uses: {unused}"


def test_every_root_field_has_an_operation() -> None:
    schema = _schema()
    used: set[str] = set()
    for operation in _operations().values():
        root = schema.get_root_type(operation.operation)
        assert root is not None
        used |= {f"{root.name}.{s.name.value}" for s in operation.selection_set.selections if isinstance(s, FieldNode)}
    roots = [t for t in (schema.query_type, schema.mutation_type, schema.subscription_type) if t is not None]
    fields = {f"{root.name}.{field}" for root in roots for field in root.fields}
    missing = sorted(fields - used)
    assert not missing, f"root fields without an operation in frontend_schema/operations: {missing}"


def test_every_event_member_has_a_fragment_used_by_events_and_pending_events() -> None:
    schema, fragments = _schema(), _fragments()
    event = schema.get_type("Event")
    assert isinstance(event, GraphQLUnionType)
    members = {t.name for t in schema.get_possible_types(event)}
    operations = _operations()
    for name in ("Events", "PendingEvents"):
        spread = {fragments[f].type_condition.name.value for f in _spreads(operations[name]) if f in fragments}
        assert members <= spread, f"{name} has no fragment on {sorted(members - spread)}"


def test_operations_pass_the_servers_query_limits_as_apollo_sends_them() -> None:
    schema, fragments = _schema(), _fragments()
    defaults = Settings.model_fields
    max_tokens = defaults["max_tokens"].default
    rules = [
        *specified_rules,
        *QueryDepthLimiter(max_depth=defaults["max_query_depth"].default).validation_rules,
        *MaxAliasesLimiter(max_alias_count=defaults["max_aliases"].default).validation_rules,
        cost_limit_rule(defaults["max_query_cost"].default),
    ]
    for name, operation in _operations().items():
        sent = visit(_document(operation, fragments), _WithTypename())
        # Parsing again applies the server's token limit to the text a client sends.
        document = parse(print_ast(sent), max_tokens=max_tokens)
        errors = validate(schema, document, rules)
        assert not errors, f"operation {name} would be refused: {[e.message for e in errors]}"


# The largest `first` each paged field accepts (more is BAD_USER_INPUT).
LARGEST_PAGES = {
    "conversations": MAX_CONVERSATIONS_PAGE,
    "members": MAX_MEMBERS_PAGE,
    "pendingEvents": MAX_PENDING_PAGE,
    "searchUsers": MAX_SEARCH_PAGE,
}


class _LargestPages(Visitor):
    """Collects, for each variable that sizes a page, the largest page its field accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.variables: dict[str, int] = {}

    def enter_field(self, node: FieldNode, *_args: object) -> None:
        for argument in node.arguments or ():
            if argument.name.value == "first" and isinstance(argument.value, VariableNode):
                self.variables[argument.value.name.value] = LARGEST_PAGES[node.name.value]


def test_operations_stay_within_the_cost_limit_at_the_largest_pages() -> None:
    """Review 2, item 1: costed with the sizes a request sends, every kit operation still runs at its largest pages."""
    schema, fragments = _schema(), _fragments()
    max_cost = Settings.model_fields["max_query_cost"].default
    for name, operation in _operations().items():
        largest = _LargestPages()
        visit(_document(operation, fragments), largest)
        cost = operation_cost(schema, operation, fragments, variables=largest.variables)
        assert cost <= max_cost, f"operation {name} costs {cost} at pages {largest.variables}, over {max_cost}"


def test_schema_graphqls_is_an_exact_copy_of_schema_graphql() -> None:
    copy = KIT / "schema.graphqls"
    assert copy.exists(), "frontend_schema/schema.graphqls is missing: run `frontend_schema/refresh`"
    assert copy.read_bytes() == SCHEMA.read_bytes(), (
        "frontend_schema/schema.graphqls differs from schema.graphql: run `frontend_schema/refresh`"
    )


def test_generated_typescript_is_current(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, f"Node.js is missing: `apt-get install nodejs npm`, then {INSTALL_HINT}"
    assert CODEGEN_BIN.exists(), f"frontend_schema/node_modules is missing: {INSTALL_HINT}"
    stamp = KIT / "node_modules" / ".installed-from-lock"
    lock = hashlib.sha256((KIT / "package-lock.json").read_bytes()).hexdigest()
    installed = stamp.read_text().strip() if stamp.exists() else None
    assert installed == lock, (
        f"frontend_schema/node_modules was installed from another package-lock.json: {INSTALL_HINT}"
    )
    # Generate into a scratch copy of the kit, so the committed output is only read.
    for name in ("schema.graphql", "codegen.ts", "package.json"):
        shutil.copy(KIT / name, tmp_path / name)
    shutil.copytree(OPERATIONS, tmp_path / "operations")
    (tmp_path / "node_modules").symlink_to(KIT / "node_modules", target_is_directory=True)
    run = subprocess.run(
        [node, str(CODEGEN_BIN.resolve()), "--config", "codegen.ts", "--silent"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, f"graphql-codegen failed:\n{run.stdout}\n{run.stderr}"
    fresh, committed = tmp_path / "generated", KIT / "generated"
    comparison = filecmp.dircmp(fresh, committed)
    stale = comparison.diff_files + comparison.left_only + comparison.right_only
    # dircmp compares shallowly (size and time) first; compare the bytes to be sure.
    stale += [
        f.name
        for f in fresh.iterdir()
        if (committed / f.name).exists() and f.read_bytes() != (committed / f.name).read_bytes()
    ]
    assert not stale, f"frontend_schema/generated is stale ({sorted(set(stale))}): run `frontend_schema/refresh`"


def test_apollo_ios_config_names_files_that_exist() -> None:
    config = json.loads((KIT / "apollo-codegen-config.json").read_text())
    schema_paths = config["input"]["schemaSearchPaths"]
    operation_paths = config["input"]["operationSearchPaths"]
    assert [p for pattern in schema_paths for p in KIT.glob(pattern)] == [KIT / "schema.graphqls"]
    found = {p for pattern in operation_paths for p in KIT.glob(pattern)}
    assert found == set(OPERATIONS.glob("*.graphql"))
    assert config["output"]["schemaTypes"]["path"]


def test_apollo_kotlin_block_names_files_that_exist_and_maps_datetime() -> None:
    block = (KIT / "apollo-kotlin.gradle.kts").read_text()
    assert 'mapScalar("DateTime", "kotlin.String")' in block
    assert re.search(r'service\("parley"\)', block)
    named = re.findall(r'parleyKit\.resolve\("([^"]+)"\)', block)
    assert sorted(named) == ["operations", "schema.graphqls"], named
    for name in named:
        assert (KIT / name).exists(), f"apollo-kotlin.gradle.kts names {name}, which frontend_schema/ lacks"


async def test_the_kits_operations_carry_a_conversation(embedded_server: ThreadServer) -> None:
    # Validation cannot tell whether the fragments on the Event union come back filled in
    # (events are projected without the executor): run the kit's own documents, as sent.
    anonymous = HttpClient(embedded_server.url)

    async def register(name: str) -> tuple[HttpClient, Json]:
        username = f"{name}_{uuid.uuid4().hex[:10]}"
        data = await anonymous.data(_sent("Register"), username=username, password="correct horse", deviceName="phone")
        return HttpClient(embedded_server.url, data["register"]["token"]), data["register"]

    alice, alice_auth = await register("alice")
    bob, bob_auth = await register("bob")
    bob_id = bob_auth["user"]["id"]
    chat = (await alice.data(_sent("StartDirectConversation"), userId=bob_id))["startDirectConversation"]
    assert {m["user"]["id"] for m in chat["members"]} == {alice_auth["user"]["id"], bob_id}

    async with ws_connect(embedded_server.ws_url, bob.token) as socket:
        events = await socket.subscribe(_sent("Events"))
        first = (await events.next())["events"]  # the conversation's CREATED event, pending for bob
        assert first["__typename"] == "ConversationEvent"
        assert first["conversation"]["id"] == chat["id"]
        sent = await alice.data(
            _sent("SendMessage"), input={"conversationId": chat["id"], "clientId": "c-1", "body": "hi bob"}
        )
        received = (await events.next())["events"]
    assert received["__typename"] == "MessageEvent"
    assert received["message"] == sent["sendMessage"]
    assert received["message"]["sender"]["username"] == alice_auth["user"]["username"]

    await bob.data(_sent("Acknowledge"), cursor=received["cursor"])
    await bob.data(_sent("MarkRead"), conversationId=chat["id"], messageIds=[received["message"]["id"]])
    pending = (await alice.data(_sent("PendingEvents")))["pendingEvents"]
    receipts = [e["receipt"] for e in pending if e["__typename"] == "ReceiptEvent"]
    assert [r["status"] for r in receipts] == ["DELIVERED", "READ"]
    assert {r["messageId"] for r in receipts} == {sent["sendMessage"]["id"]}
    listed = (await bob.data(_sent("ConversationList")))["conversations"]
    assert [c["id"] for c in listed] == [chat["id"]]
