"""The day's cost as a FOCUS 1.2 file (FinOps Open Cost and Usage Specification), for Finout's FOCUS intake
or any other FinOps tool.

One row per delivered row (day × allocation × provider × model). Every mandatory column is present;
the cost columns all carry the delivered cost, since no list price or discount is known apart from it.
Tokens are the consumed and pricing quantity. The allocation keys go in `Tags` (the same values, hashed
the same way, as the Finout file); model, feature, calls and the source of the cost are `x_` columns.
An `unattributed` row (invoice basis) has no tokens: its quantity is 0.
"""

from __future__ import annotations

from finops_pipeline.destinations.finout import dimension_expressions, safe_text

SERVICE_NAMES = {"openai": "OpenAI API", "anthropic": "Claude API"}

# In the spec's order: the mandatory columns, then the recommended and conditional ones used here.
FOCUS_COLUMNS = [
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency",
    "ChargePeriodEnd", "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "EffectiveCost",
    "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName",
    "ServiceCategory", "ServiceName", "ServiceSubcategory", "Tags",
]
CUSTOM_COLUMNS = ["x_Model", "x_Feature", "x_Calls", "x_CostSource", "x_LangfuseProjectId"]


def focus_rows_sql(allocation_keys: list[str], hashed: list[str]) -> str:
    """The day's FOCUS rows from the temp table `delivered` (parameter `$salt` when `hashed`)."""
    expressions = dimension_expressions(allocation_keys, hashed)
    tags = "json_object(" + ", ".join(f"'{k}', {expressions[k]}" for k in allocation_keys) + ")"
    service = "CASE provider " + " ".join(f"WHEN '{p}' THEN '{n}'" for p, n in SERVICE_NAMES.items()) + " ELSE provider END"
    feature = expressions["service_name"]
    utc = "'%Y-%m-%dT%H:%M:%SZ'"
    return f"""
        SELECT
            cost_usd AS BilledCost,
            provider AS BillingAccountId,
            provider AS BillingAccountName,
            'USD' AS BillingCurrency,
            strftime(date_trunc('month', day) + INTERVAL 1 MONTH, {utc}) AS BillingPeriodEnd,
            strftime(date_trunc('month', day), {utc}) AS BillingPeriodStart,
            'Usage' AS ChargeCategory,
            NULL AS ChargeClass,
            {safe_text("CASE WHEN source = 'invoice' THEN model || ': billed, not attributed to a traced call' "
                        "ELSE model || ': ' || calls || ' calls, ' || total_tokens || ' tokens' END")} AS ChargeDescription,
            'Usage-Based' AS ChargeFrequency,
            strftime(day + INTERVAL 1 DAY, {utc}) AS ChargePeriodEnd,
            strftime(day, {utc}) AS ChargePeriodStart,
            total_tokens AS ConsumedQuantity,
            'Tokens' AS ConsumedUnit,
            cost_usd AS ContractedCost,
            cost_usd AS EffectiveCost,
            provider AS InvoiceIssuerName,
            cost_usd AS ListCost,
            total_tokens AS PricingQuantity,
            'Tokens' AS PricingUnit,
            provider AS ProviderName,
            provider AS PublisherName,
            'AI and Machine Learning' AS ServiceCategory,
            {service} AS ServiceName,
            'Generative AI' AS ServiceSubcategory,
            {tags} AS Tags,
            {safe_text("model")} AS x_Model,
            {safe_text(feature)} AS x_Feature,
            calls AS x_Calls,
            source AS x_CostSource,
            -- the Langfuse project traced in: rows of several projects stay apart (and say whose they are)
            {safe_text("project_id")} AS x_LangfuseProjectId
        FROM delivered
        WHERE cost_usd <> 0
        ORDER BY BilledCost DESC, x_Model, Tags, x_LangfuseProjectId
    """
