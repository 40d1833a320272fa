"""infra/ is what `azd up` deploys: every Bicep file parses, the Function App sets exactly the settings
the code reads (plus the platform's own), no key or secret literal exists, and checkov passes with
every exception written down. No network: pycep parses locally, checkov runs with --skip-download."""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pathspec
import pytest
from pycep import BicepParser

from shared.rules import queues as app_queues
from shared.rules import settings as app_settings
from shared.store.tables import TABLE_NAMES

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
CHECKOV = ROOT / ".venv-infra" / "bin" / "checkov"

# Names the Function App may set although shared/rules/settings.py never reads them: the platform's own.
PLATFORM_SETTINGS = {
    # Host storage through the managed identity; the code reads the same family (settings.py).
    **{f"AzureWebJobsStorage__{suffix}": "identity-based host storage" for suffix in app_settings.STORAGE_IDENTITY_SUFFIXES},
    # The host (not the code) needs blob: timer locks, host keys, leases. Service URIs instead of
    # accountName so national clouds work.
    "AzureWebJobsStorage__blobServiceUri": "host storage, blob endpoint",
    # Where the Functions host and worker send telemetry (endpoint + resource id; with local auth
    # disabled on the component it is no credential) ...
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "telemetry endpoint",
    # ... and how they authenticate: Entra ID with the user-assigned identity.
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "telemetry auth via the managed identity",
    # host.json overrides the host reads (README "Scale"): the invocation timeout and queue batch size.
    "AzureFunctionsJobHost__functionTimeout": "host.json functionTimeout",
    "AzureFunctionsJobHost__extensions__queues__batchSize": "host.json extensions.queues.batchSize",
}
SECRET_SETTINGS = {"MS_CLIENT_SECRET", "CRM_SHARED_SECRET", "CRM_CALLBACK_SECRET", "TOKEN_ENCRYPTION_KEYS"}
WORK_QUEUES = {
    "activity-sync",
    "mailbox-reconcile",
    "crm-callbacks",
    "activity-backfill",
    "mailbox-maintenance",
    "calendar-move",
    "mailbox-removal",
    "user-enable",
}
# The name of queue i in infra/app/storage.bicep's 'queues' loop, and the same rule in Python.
QUEUE_NAME_TEMPLATE = (
    "${workQueues[i / (workQueueShards * 2)]}${(i / 2) % workQueueShards == 0 ? '' : '-${(i / 2) % workQueueShards}'}"
    "${i % 2 == 1 ? '-poison' : ''}"
)


def bicep_queue_name(work_queues: list[str], shards: int, i: int) -> str:
    shard = (i // 2) % shards
    return f"{work_queues[i // (shards * 2)]}{'' if shard == 0 else f'-{shard}'}{'-poison' if i % 2 == 1 else ''}"
TABLES_AT_LEAST = {"Connections", "Links", "OAuthFlows", "Dedup", "Jobs"}
ROLE_IDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
# Literals that would mean a key, connection string or shared-key call somewhere in infra/.
FORBIDDEN = re.compile(
    r"AccountKey=|DefaultEndpointsProtocol=|SharedAccessSignature=|SharedAccessKey|InstrumentationKey="
    r"|UseDevelopmentStorage|listKeys\(|listSecrets\(|listConnectionStrings|listAccountSas|listServiceSas"
    r"|primaryKey|secondaryKey|\.keys\(",
    re.IGNORECASE,
)


@cache
def bicep(path: Path) -> dict[str, Any]:
    return BicepParser(cache=False).parse(file_path=path)


def module(name: str) -> dict[str, Any]:
    return bicep(INFRA / "app" / f"{name}.bicep")


def resources(doc: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [r["config"] for r in doc.get("resources", {}).values() if r["type"] == type_ and not r["existing"]]


def only(doc: dict[str, Any], type_: str) -> dict[str, Any]:
    found = resources(doc, type_)
    assert len(found) == 1, f"expected one {type_}, found {len(found)}"
    return found[0]


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """A looped resource (`[for x in xs: {...}]`) keeps its body one level down."""
    return resource["config"] if "loop_type" in resource else resource


def decorator(param: dict[str, Any], kind: str) -> Any:
    return next((d.get("argument", True) for d in param["decorators"] if d["type"] == kind), None)


def dotted(expr: Any) -> str:
    """`storage.properties.primaryEndpoints.blob` back from pycep's nested property accessors."""
    if isinstance(expr, str):
        return expr
    operator = expr["operator"]
    assert operator["type"] == "property_accessor", operator
    return f"{dotted(operator['operands']['operand_1'])}.{dotted(operator['operands']['operand_2'])}"


def app_settings_in_bicep() -> dict[str, Any]:
    site_config = [c for c in resources(module("api"), "Microsoft.Web/sites/config") if c["name"] == "appsettings"]
    assert len(site_config) == 1, "infra/app/api.bicep must hold one 'appsettings' config resource"
    return site_config[0]["properties"]


def minimal_environment() -> dict[str, str]:
    return {
        "AzureWebJobsStorage__accountName": "st",
        "MS_CLIENT_ID": "client",
        "MS_CLIENT_SECRET": "secret",
        "PUBLIC_BASE_URL": "https://func.example.net",
        "CRM_SHARED_SECRET": "9f2c4e7a1b3d5f6e8a0c2e4f6a8b0d1e",
        "CRM_CALLBACK_SECRET": "Zq4-Tm8_wX2yB6nR0vK3pL7sD1fH5gJ9",
        "CRM_CALLBACK_URL": "https://crm.example.com/hooks",
        "CRM_RETURN_ORIGINS": "https://crm.example.com",
        "TOKEN_ENCRYPTION_KEYS": "k1:" + "A" * 43 + "=",
    }


# ---- parsing and layout ---------------------------------------------------------------------------


def test_the_bicep_files_are_there() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert {"main.bicep", "app/api.bicep", "app/storage.bicep", "app/keyvault.bicep", "app/rbac.bicep"} <= names
    assert (INFRA / "main.parameters.json").is_file() and (INFRA / "abbreviations.json").is_file()


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    doc = bicep(path)
    assert doc.get("resources") or doc.get("modules"), f"{path.name} declares nothing"


def test_main_composes_local_modules_that_exist() -> None:
    doc = bicep(MAIN)
    assert doc["globals"]["scope"]["value"] == "subscription"
    for name, mod in doc["modules"].items():
        assert mod["type"] == "local", f"module {name} must be a local file (checkov and these tests read it)"
        assert (INFRA / mod["detail"]["path"]).resolve().is_file(), f"module {name}: {mod['detail']['path']} missing"
    assert len(MAIN.read_text().splitlines()) < 250, "keep main.bicep a short composition file"


def test_abbreviations_used_by_main_exist() -> None:
    abbreviations = json.loads((INFRA / "abbreviations.json").read_text())
    used = set(re.findall(r"abbrs\.(\w+)", MAIN.read_text()))
    assert used and used <= abbreviations.keys(), used - abbreviations.keys()


# ---- app settings ---------------------------------------------------------------------------------


def test_every_setting_the_code_reads_is_set() -> None:
    missing = set(app_settings.SETTING_NAMES) - app_settings_in_bicep().keys()
    assert not missing, f"infra/app/api.bicep does not set {sorted(missing)}"


def test_nothing_is_set_that_neither_code_nor_platform_reads() -> None:
    unknown = app_settings_in_bicep().keys() - set(app_settings.SETTING_NAMES) - PLATFORM_SETTINGS.keys()
    assert not unknown, f"app settings nobody reads: {sorted(unknown)} (add them to SETTING_NAMES or remove them)"


def test_storage_is_reached_with_the_identity_only() -> None:
    values = app_settings_in_bicep()
    assert "AzureWebJobsStorage" not in values, "no connection string: use the AzureWebJobsStorage__* family"
    assert values["AzureWebJobsStorage__credential"] == "managedidentity"
    assert values["AzureWebJobsStorage__clientId"] == "identityClientId"
    for service in ("blob", "queue", "table"):
        uri = dotted(values[f"AzureWebJobsStorage__{service}ServiceUri"])
        assert uri == f"storage.properties.primaryEndpoints.{service}"


def test_secrets_are_key_vault_references_resolved_by_the_identity() -> None:
    values = app_settings_in_bicep()
    for name in SECRET_SETTINGS:
        assert str(values[name]).startswith("@Microsoft.KeyVault(SecretUri=${"), name
    site = only(module("api"), "Microsoft.Web/sites")
    assert site["identity"]["type"] == "UserAssigned"
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    assert app_settings_in_bicep()["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${identityClientId};Authorization=AAD"
    )


def test_parameter_defaults_are_the_code_defaults() -> None:
    params = bicep(MAIN)["parameters"]
    loaded = app_settings.load(minimal_environment())
    assert params["msTenant"]["default"] == loaded.ms_tenant
    assert params["msAuthorityHost"]["default"] == loaded.ms_authority_host
    assert params["graphApiBase"]["default"] == loaded.graph_api_base
    assert params["syncWindowPastDays"]["default"] == loaded.sync_window_past_days
    assert params["syncWindowFutureDays"]["default"] == loaded.sync_window_future_days
    assert params["completedActivities"]["default"] == loaded.completed_activities


@pytest.mark.parametrize(
    ("param", "setting"),
    [("syncWindowPastDays", "SYNC_WINDOW_PAST_DAYS"), ("syncWindowFutureDays", "SYNC_WINDOW_FUTURE_DAYS")],
)
def test_parameter_bounds_are_the_code_bounds(param: str, setting: str) -> None:
    spec = bicep(MAIN)["parameters"][param]
    low, high = decorator(spec, "min_value"), decorator(spec, "max_value")
    for accepted in (low, high):
        app_settings.load(minimal_environment() | {setting: str(accepted)})
    for rejected in (low - 1, high + 1):
        with pytest.raises(app_settings.SettingsError, match=setting):
            app_settings.load(minimal_environment() | {setting: str(rejected)})


def test_completed_activities_choices_are_the_code_choices() -> None:
    allowed = decorator(bicep(MAIN)["parameters"]["completedActivities"], "allowed")
    for choice in allowed:
        assert app_settings.load(minimal_environment() | {"COMPLETED_ACTIVITIES": choice}).completed_activities == choice
    with pytest.raises(app_settings.SettingsError):
        app_settings.load(minimal_environment() | {"COMPLETED_ACTIVITIES": "archive"})


# ---- secrets and keys -----------------------------------------------------------------------------


def test_secure_parameters_have_no_defaults() -> None:
    for path in BICEP_FILES:
        for name, spec in bicep(path).get("parameters", {}).items():
            if decorator(spec, "secure"):
                assert spec["default"] is None, f"{path.name}: @secure() param {name} has a default"
    main = bicep(MAIN)["parameters"]
    for name in ("msClientSecret", "crmSharedSecret", "tokenEncryptionKeys"):
        assert decorator(main[name], "secure"), f"main.bicep: {name} must be @secure()"


def test_no_output_carries_a_secret() -> None:
    for path in BICEP_FILES:
        doc = bicep(path)
        secure = {n for n, spec in doc.get("parameters", {}).items() if decorator(spec, "secure")}
        for name, output in doc.get("outputs", {}).items():
            text = json.dumps(output["value"])
            assert not any(re.search(rf"\b{s}\b", text) for s in secure), f"{path.name}: output {name}"
            assert "secretUri" not in text and "ConnectionString" not in text, f"{path.name}: output {name}"


def test_no_key_or_connection_string_literal_in_infra() -> None:
    offenders = []
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_parameter_file_only_maps_azd_environment_values() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = bicep(MAIN)["parameters"]
    for name, entry in parameters.items():
        assert name in declared, f"main.parameters.json sets unknown parameter {name}"
        assert re.fullmatch(r"\$\{[A-Z_]+(=[^}]*)?\}", entry["value"]), f"{name} must be ${{AZD_ENV_VAR}}"
        if decorator(declared[name], "secure"):
            assert "=" not in entry["value"], f"{name}: a secret never has a default"
    required = {n for n, spec in declared.items() if spec["default"] is None}
    assert required <= parameters.keys(), f"not mapped from the azd environment: {required - parameters.keys()}"


# ---- resources ------------------------------------------------------------------------------------


def test_function_app_runs_python_311_on_flex_consumption() -> None:
    api = module("api")
    plan = only(api, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = only(api, "Microsoft.Web/sites")
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["deployment"]["storage"]["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    assert site["properties"]["httpsOnly"] is True
    assert site["tags"]["function"]["parameters"]["arg_2"] == {"'azd-service-name'": "api"}
    policies = resources(api, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert sorted(p["name"] for p in policies) == ["ftp", "scm"]
    assert all(p["properties"]["allow"] is False for p in policies)


def test_storage_has_no_shared_keys_and_holds_the_queues_and_tables() -> None:
    storage = module("storage")
    account = only(storage, "Microsoft.Storage/storageAccounts")["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["allowBlobPublicAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    work_queues = storage["variables"]["workQueues"]["value"]
    assert set(work_queues) == WORK_QUEUES == set(app_queues.QUEUE_NAMES)
    shards_param = storage["parameters"]["workQueueShards"]
    assert (decorator(shards_param, "min_value"), decorator(shards_param, "max_value")) == (1, app_queues.MAX_SHARDS)
    loop = storage["resources"]["queues"]["config"]
    assert loop["config"]["name"] == QUEUE_NAME_TEMPLATE
    main_shards = bicep(MAIN)["parameters"]["scale"]["default"]["workQueueShards"]
    assert main_shards == app_settings.DEFAULT_WORK_QUEUE_SHARDS
    for shards in (1, 3, main_shards):
        names = [bicep_queue_name(work_queues, shards, i) for i in range(len(work_queues) * shards * 2)]
        expected = app_queues.all_queues(shards)
        assert sorted(names) == sorted([*expected, *(f"{q}-poison" for q in expected)])
    tables = storage["variables"]["tableNames"]["value"]
    assert len(tables) == len(set(tables)) and TABLES_AT_LEAST <= set(tables)
    assert set(tables) == set(TABLE_NAMES), "infra/app/storage.bicep tableNames != shared/store/tables.py TABLE_NAMES"
    assert body(storage["resources"]["tables"]["config"])["name"] == "table"


def test_identity_holds_exactly_the_data_plane_roles() -> None:
    text = (INFRA / "app" / "rbac.bicep").read_text()
    granted = set(re.findall(r"'([0-9a-f-]{36})'", text))
    assert granted == set(ROLE_IDS.values()), {n for n, i in ROLE_IDS.items() if i not in granted}
    for assignment in resources(module("rbac"), "Microsoft.Authorization/roleAssignments"):
        assert body(assignment)["properties"]["principalType"] == "ServicePrincipal"


def test_key_vault_uses_rbac_and_keeps_deleted_secrets() -> None:
    vault = only(module("keyvault"), "Microsoft.KeyVault/vaults")["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert vault["enablePurgeProtection"] is True
    assert "accessPolicies" not in vault


def test_monitoring_accepts_entra_authenticated_telemetry_only() -> None:
    monitoring = module("monitoring")
    assert only(monitoring, "Microsoft.Insights/components")["properties"]["DisableLocalAuth"] is True
    workspace = only(monitoring, "Microsoft.OperationalInsights/workspaces")
    assert workspace["properties"]["features"]["disableLocalAuth"] is True


def test_alerts_cover_poison_queues_reauth_and_failures() -> None:
    alerts = module("alerts")
    queries = " ".join(a["query"] for a in alerts["variables"]["logAlerts"]["value"])
    assert "-poison" in queries and "StorageQueueLogs" in queries
    assert '"connection.reauth_required"' in queries
    assert "AppRequests | where Success == false" in queries
    backlog = only(alerts, "Microsoft.Insights/metricAlerts")["properties"]["criteria"]["allOf"][0]
    assert backlog["metricName"] == "QueueMessageCount"
    diagnostics = only(module("storage"), "Microsoft.Insights/diagnosticSettings")["properties"]
    assert {"category": "StorageWrite", "enabled": True} in diagnostics["logs"]


def test_outputs_give_the_base_url_and_the_redirect_uri() -> None:
    outputs = bicep(MAIN)["outputs"]
    host = "${api.outputs.defaultHostName}"
    loaded = app_settings.load(minimal_environment() | {"PUBLIC_BASE_URL": f"https://{host}"})
    assert outputs["PUBLIC_BASE_URL"]["value"] == loaded.public_base_url
    assert outputs["REDIRECT_URI"]["value"] == loaded.redirect_uri == f"https://{host}/api/auth/callback"
    assert app_settings_in_bicep()["PUBLIC_BASE_URL"] == "https://${site.properties.defaultHostName}"


def test_azure_yaml_deploys_this_folder_as_the_api_function() -> None:
    text = (ROOT / "azure.yaml").read_text()
    service = re.search(r"^services:\n  api:\n((?:    .*\n)+)", text, re.MULTILINE)
    assert service, "azure.yaml needs services.api"
    fields = dict(line.strip().split(": ", 1) for line in service.group(1).splitlines())
    assert fields == {"project": ".", "language": "python", "host": "function"}
    assert re.search(r"^infra:\n  provider: bicep\n  path: infra\n", text, re.MULTILINE)


# ---- what ARM, the platform and azd accept on the first `azd up` ----------------------------------
# pycep and checkov read syntax and policy; these rules hold what the first deployment would
# otherwise find out after minutes: properties Flex Consumption rejects, alert queries that do not
# type-check or name tables a new workspace lacks, storage redundancy a region does not offer,
# parameter values outside the plan's limits, and a deployment package full of local folders.

# Column types (Azure Monitor table reference) of the columns the alert queries filter on. A column
# missing here fails the check, so the table grows with the queries.
KQL_COLUMNS: dict[str, dict[str, str]] = {
    "StorageQueueLogs": {"OperationName": "string", "StatusCode": "string", "StatusText": "string", "Uri": "string"},
    "AppTraces": {"Message": "string"},
    "AppRequests": {"Success": "bool", "OperationName": "string", "ResultCode": "string", "DurationMs": "real"},
}
KQL_NUMBER = {"int", "long", "real"}
KQL_TO_NUMBER = re.compile(r"(?:toint|tolong|toreal|todouble)\((\w+)\)")
# Flex Consumption regions without availability zones, hence without ZRS for general-purpose v2
# storage (learn.microsoft.com/azure/storage/common/redundancy-regions-zrs).
REGIONS_WITHOUT_ZRS = {"australiasoutheast", "northcentralus", "southindia", "ukwest", "westcentralus", "westus"}


def kql_type_errors(query: str) -> list[str]:
    """Comparisons in a log alert query whose operand types do not match (KQL rejects them, and a
    scheduled query rule validates its query at deployment): `between` or an ordering comparison on
    a string column, a column compared with a literal of another type, `has` on a non-string."""
    table = query.split("|", 1)[0].strip()
    if table not in KQL_COLUMNS:
        return [f"table {table!r}: add its column types to KQL_COLUMNS"]
    columns = KQL_COLUMNS[table] | {"Queue": "string", "Function": "string"}  # columns the queries create
    masked = re.sub(r'@?"[^"]*"', '""', query)
    errors = []

    def kind(operand: str) -> str:
        converted = KQL_TO_NUMBER.fullmatch(operand)
        if converted:
            return "number" if converted.group(1) in columns else f"unknown column {converted.group(1)}"
        if operand not in columns:
            return f"unknown column {operand}"
        return "number" if columns[operand] in KQL_NUMBER else columns[operand]

    for operand in re.findall(r"(\w+(?:\(\w+\))?)\s+!?between\s*\(", masked):
        if kind(operand) != "number":
            errors.append(f"{operand} between (..): {kind(operand)}, not a number")
    for operand, operator, literal in re.findall(
        r"(\w+(?:\(\w+\))?)\s*(==|!=|<=|>=|<|>)\s*(\"\"|true|false|-?\d+(?:\.\d+)?)", masked
    ):
        literal_kind = "string" if literal == '""' else "bool" if literal in ("true", "false") else "number"
        if kind(operand) != literal_kind:
            errors.append(f"{operand} {operator} {literal}: {kind(operand)} against a {literal_kind}")
        if operator in ("<", ">", "<=", ">=") and literal_kind != "number":
            errors.append(f"{operand} {operator} {literal}: ordering needs numbers")
    for operand in re.findall(r"(\w+)\s+!?(?:has|contains|startswith|endswith)\b", masked):
        if kind(operand) != "string":
            errors.append(f"{operand} has ..: {kind(operand)}, not a string")
    return errors


def log_alerts() -> list[dict[str, Any]]:
    return module("alerts")["variables"]["logAlerts"]["value"]


def test_flex_site_sets_no_ftps_state() -> None:
    # ARM rejects siteConfig.ftpsState on Flex Consumption sites (error 51021); FTP stays off through
    # the 'ftp' basicPublishingCredentialsPolicies resource instead.
    site = only(module("api"), "Microsoft.Web/sites")
    assert "ftpsState" not in site["properties"].get("siteConfig", {}), "Flex Consumption rejects ftpsState"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ('StorageQueueLogs | where StatusCode between (200 .. 299)', "StatusCode between"),
        ("StorageQueueLogs | where StatusCode == 201", "StatusCode == 201"),
        ('AppRequests | where Success == "False"', "Success =="),
        ("AppRequests | where ResultCode >= 500", "ResultCode >="),
        ("AppRequests | where Nope == 1", "unknown column Nope"),
        ("Heartbeat | where Computer has \"x\"", "KQL_COLUMNS"),
    ],
)
def test_the_query_type_check_catches_mistyped_comparisons(query: str, says: str) -> None:
    assert any(says in error for error in kql_type_errors(query)), kql_type_errors(query)


def test_every_alert_query_compares_values_of_its_own_type() -> None:
    for alert in log_alerts():
        assert not kql_type_errors(alert["query"]), f"{alert['name']}: {kql_type_errors(alert['query'])}"


def test_alert_queries_deploy_on_a_workspace_without_data_and_match_the_readme() -> None:
    # A new workspace has no StorageQueueLogs / AppTraces / AppRequests until data arrives, and
    # validation at deployment fails with "Failed to resolve table" (README: Alerts).
    for rule in resources(module("alerts"), "Microsoft.Insights/scheduledQueryRules"):
        assert body(rule)["properties"].get("skipQueryValidation") is True, "set skipQueryValidation: true"
    readme = (INFRA / "README.md").read_text()
    assert "skipQueryValidation" in readme
    for alert in log_alerts():
        assert alert["query"].replace("|", "\\|") in readme, f"infra/README.md shows an old {alert['name']} query"


def test_storage_redundancy_is_a_parameter_that_fits_the_region() -> None:
    main = bicep(MAIN)
    spec = main["parameters"].get("storageSkuName")
    assert spec, "main.bicep needs a storageSkuName parameter (ZRS is not offered in every Flex region)"
    assert {"Standard_ZRS", "Standard_LRS"} <= set(decorator(spec, "allowed"))
    assert main["modules"]["storage"]["config"]["params"]["skuName"] == "storageSkuName"
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]["storageSkuName"]["value"]
    assert mapped.startswith("${AZURE_STORAGE_SKU"), mapped
    storage = module("storage")
    assert only(storage, "Microsoft.Storage/storageAccounts")["sku"]["name"] == "sku"
    zone_redundant = storage["variables"]["zoneRedundantRegions"]["value"]
    flex_regions = set(decorator(main["parameters"]["location"], "allowed") or [])
    assert set(zone_redundant) <= flex_regions, set(zone_redundant) - flex_regions
    assert not REGIONS_WITHOUT_ZRS & set(zone_redundant), REGIONS_WITHOUT_ZRS & set(zone_redundant)
    assert {"eastus", "westeurope", "swedencentral"} <= set(zone_redundant)
    # Empty = automatic: ZRS where the region offers it, LRS elsewhere.
    sku = " ".join((INFRA / "app" / "storage.bicep").read_text().split())
    assert (
        "var sku = empty(skuName) ? (contains(zoneRedundantRegions, location) ? 'Standard_ZRS' : 'Standard_LRS')"
        " : skuName" in sku
    )


def test_maximum_instance_count_is_within_flex_consumption_limits() -> None:
    spec = bicep(MAIN)["parameters"]["maximumInstanceCount"]
    low, high = decorator(spec, "min_value"), decorator(spec, "max_value")
    assert low is not None and low >= 40, "Flex Consumption's maximumInstanceCount is at least 40"
    assert high is not None and high <= 1000
    assert low <= spec["default"] <= high


def test_location_is_limited_to_flex_consumption_regions() -> None:
    spec = bicep(MAIN)["parameters"]["location"]
    allowed = decorator(spec, "allowed")
    assert allowed, "restrict location with @allowed so azd only offers Flex Consumption regions"
    assert len(set(allowed)) == len(allowed) and all(re.fullmatch(r"[a-z0-9]+", r) for r in allowed), allowed
    assert {"eastus", "westeurope", "swedencentral"} <= set(allowed)
    assert not {r for r in allowed if r.endswith("euap")}, "canary regions need enrollment"
    assert decorator(spec, "metadata") == {"azd": {"type": "location"}}


def test_an_unresolved_key_vault_reference_stops_the_app() -> None:
    # App Service passes the reference text itself when it cannot resolve it (role not effective yet).
    references = {n: str(v) for n, v in app_settings_in_bicep().items() if str(v).startswith("@Microsoft.KeyVault(")}
    assert references.keys() == SECRET_SETTINGS
    for name, reference in references.items():
        unresolved = re.sub(r"\$\{[^}]*\}", f"https://kv-x.vault.azure.net/secrets/{name.lower()}", reference)
        with pytest.raises(app_settings.SettingsError, match=rf"{name} is an unresolved Key Vault reference"):
            app_settings.load(minimal_environment() | {name: unresolved})


# ---- the deployment package ---------------------------------------------------------------------

# Folders that exist only on a developer's machine (Makefile, local platform, tests, azd) and must
# never reach the deployment package; '.venv-*' stands for any further virtual environment.
LOCAL_ONLY = (
    ".venv", ".venv-infra", ".venv-bench", ".venv-py312", "node_modules", ".local", "test-artifacts",
    "bench/out", "bench", "local", "tests", "infra", "docs", ".azure", ".pytest_cache", "__pycache__",
    "shared/__pycache__",
)
APP_FILES = ("function_app.py", "host.json", "requirements.txt", "shared/rules/settings.py", "functions/health.py")
PACKAGE_LIMIT_BYTES = 2 * 1024 * 1024


def package_files(root: Path) -> dict[str, int]:
    """The files `azd deploy` zips for the function service, with their sizes. When the service
    folder holds a .funcignore, azd applies it with .gitignore rules instead of its own defaults
    (learn.microsoft.com/azure/developer/azure-developer-cli/service-packaging-ignore-files) and
    always leaves out .azure/; an ignored folder is not walked into. Symlinked folders count as
    what they point to (the zip holds the files)."""
    spec = pathspec.GitIgnoreSpec.from_lines((root / ".funcignore").read_text().splitlines())
    files: dict[str, int] = {}
    for folder, dirs, names in os.walk(root, followlinks=True):
        relative = Path(folder).relative_to(root)
        dirs[:] = [
            d for d in dirs
            if not (relative / d).as_posix() == ".azure" and not spec.match_file(f"{(relative / d).as_posix()}/")
        ]
        for name in names:
            path = (relative / name).as_posix()
            if not spec.match_file(path) and (Path(folder) / name).exists():  # a dangling link ships nothing
                files[path] = (Path(folder) / name).stat().st_size
    return files


def test_funcignore_keeps_every_local_only_folder_out_of_the_package(tmp_path: Path) -> None:
    (tmp_path / ".funcignore").write_text((ROOT / ".funcignore").read_text())
    for folder in LOCAL_ONLY:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "probe.py").write_text("x = 1\n")
    for name in APP_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "local.settings.json").write_text("{}\n")

    assert sorted(package_files(tmp_path)) == sorted([*APP_FILES, ".funcignore"])


def test_the_deployment_package_holds_the_app_and_nothing_local() -> None:
    files = package_files(ROOT)
    assert set(APP_FILES) <= files.keys()
    shipped_folders = {path.split("/", 1)[0] for path in files if "/" in path}
    assert shipped_folders == {"functions", "shared"}, shipped_folders
    assert not [path for path in files if path.startswith("local/")]
    size = sum(files.values())
    assert size < PACKAGE_LIMIT_BYTES, f"package is {size / 1e6:.1f} MB: {sorted(files, key=files.get)[-5:]}"


# ---- checkov --------------------------------------------------------------------------------------


@cache
def checkov_report() -> dict[str, Any]:
    if not CHECKOV.is_file():
        pytest.fail(
            f"{CHECKOV.relative_to(ROOT)} is missing: run `make setup` (it builds .venv-infra from infra/requirements.txt)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    result = subprocess.run(
        [str(CHECKOV), "-d", str(INFRA), "--framework", "bicep", "--compact", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env, check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov gave no JSON (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return report[0] if isinstance(report, list) else report


def test_checkov_passes() -> None:
    report = checkov_report()
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, (
        "checkov could not parse a Bicep file and silently skipped it (its pycep is older than ours: no lambdas, "
        "at most four comment lines in a row): "
        f"{report['results'].get('parsing_errors')}"
    )
    assert summary["resource_count"] > 20
    failed = [
        f"{c['check_id']} {c['resource']} {c['file_path']}:{c['file_line_range']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)


def test_every_checkov_exception_is_justified_inline_and_in_the_readme() -> None:
    readme = (INFRA / "README.md").read_text()
    skipped = checkov_report()["results"]["skipped_checks"]
    assert skipped, "expected the documented exceptions to show up as skipped"
    for check in skipped:
        reason = check.get("check_result", {}).get("suppress_comment", "")
        assert len(reason) > 30, f"{check['check_id']} on {check['resource']}: skip without a real reason"
        assert check["check_id"] in readme, f"{check['check_id']} is skipped but not explained in infra/README.md"



def test_scale_settings_are_provisioned_with_the_code_and_host_defaults() -> None:
    """The shard count, fan-out knobs, functionTimeout and queue batch size are parameters whose
    defaults are the code's (shared/rules/settings.py) and host.json's, so a deployment that sets
    none of them runs exactly what the tests ran."""
    params = {k: {"default": v} for k, v in bicep(MAIN)["parameters"]["scale"]["default"].items()}
    host = json.loads((ROOT / "host.json").read_text())
    assert params["workQueueShards"]["default"] == app_settings.DEFAULT_WORK_QUEUE_SHARDS
    assert params["fanoutBatchSize"]["default"] == app_settings.DEFAULT_FANOUT_BATCH_SIZE
    assert params["fanoutSpreadSeconds"]["default"] == app_settings.DEFAULT_FANOUT_SPREAD_SECONDS
    assert params["functionTimeout"]["default"] == host["functionTimeout"]
    assert params["queueBatchSize"]["default"] == host["extensions"]["queues"]["batchSize"]
    loaded = app_settings.load(minimal_environment())
    assert (loaded.work_queue_shards, loaded.fanout_batch_size, loaded.fanout_spread_seconds) == (
        app_settings.DEFAULT_WORK_QUEUE_SHARDS,
        app_settings.DEFAULT_FANOUT_BATCH_SIZE,
        app_settings.DEFAULT_FANOUT_SPREAD_SECONDS,
    )
