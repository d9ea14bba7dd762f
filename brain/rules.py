"""The default rules of the brain, as data: the topics the operator reserves for people,
the account actions the bot cannot do, and the claims no bot text may make.

Each is a default of `brain.config` (`brain.escalation.restricted_topics`,
`brain.escalation.account_actions`, `brain.policy.rules`); an operator's `gateway.yaml`
replaces a whole list. Every pattern is a case-insensitive regex.
"""

from __future__ import annotations

# Topics the operator reserves for people (policy_restricted). EN, DE, ES, FR.
RESTRICTED_TOPICS: dict[str, list[str]] = {
    "refunds": [
        r"\b(want|like|need|demand|give me|get|expect)\b.{0,25}"
        r"\b(refund|refunded|money back|reimburse)",
        r"\brefund (me|my|the|this|it)\b",
        r"\b(refund|reverse|return|pay back) (the|our|my|these|those|all) "
        r"(\w+ ){0,2}(payments?|charges?|fees?)\b",
        r"\b(möchte|will|verlange|bitte)\b.{0,30}(geld zurück|rückerstattung|erstatt)",
        r"\b(quiero|necesito|exijo)\b.{0,30}(reembols|mi dinero)",
        r"\b(veux|voudrais|souhaite|exige)\b.{0,30}(rembours)",
    ],
    "billing_dispute": [
        r"\b(charged|billed) (me )?(twice|two times|double)\b",
        r"\b(double|over|wrongly|incorrectly)[ -]?(charged|billed)\b",
        r"\b(unauthori[sz]ed|fraudulent) (charge|payment|transaction)",
        r"\b(chargeback|disput(e|ing) (a|the|this|that) (charge|payment))\b",
        r"\bnever authori[sz]ed (this|that|the|a|any) (charge|payment)",
        r"\bdoppelt (abgebucht|belastet|berechnet)|falsch (abgebucht|berechnet)",
        r"\bcobrad[oa] dos veces|cobro (indebido|duplicado|no autorizado)",
        r"\b(débité|prélevé|facturé) deux fois|prélèvement (non autorisé|en double)",
    ],
    "legal": [
        r"\b(lawyer|attorney|lawsuit|solicitor|legal action|small claims|sue you)\b",
        r"\b(anwalt|anwältin|klage|rechtliche schritte|verklagen)\b",
        r"\b(abogad[oa]|demanda|acciones legales|denunciar)\b",
        r"\b(avocat|poursuites?|action en justice|mise en demeure)\b",
    ],
    "security": [
        r"\b(hacked|compromised|phishing|account takeover|stolen card)\b",
        r"\b(security (vulnerability|hole|flaw|issue|breach)|vulnerability|"
        r"data breach|exploit)\b",
        r"\b(xss|cross[- ]site (scripting|request forgery)|csrf|sql injection|"
        r"remote code execution|rce|privilege escalation|responsible disclosure|bug bounty)\b",
        r"\b(sicherheitslücke|schwachstelle|vulnerabilidad|brecha de seguridad|"
        r"faille de sécurité|vulnérabilité)\b",
        r"\bsomeone (else )?(logged|signed) in(to)? (to )?my\b",
        r"\b(someone|somebody|a stranger|an attacker)\b.{0,20}\b(got into|broke into|"
        r"accessed|took over|is using) (my|our) (account|dashboard|login)\b",
        r"\b(gehackt|kompromittiert|phishing)\b",
        r"\b(hackead[oa]|suplantación|phishing)\b",
        r"\b(piraté|hameçonnage|usurpation)\b",
    ],
}

# Things done on a customer's account that the bot cannot do (account_action): requests
# to act, not how-to questions ("how do I cancel?" is answered from the knowledge base).
ACCOUNT_ACTIONS: dict[str, list[str]] = {
    "account_change": [
        r"\b(can|could|would|will) you (please )?(cancel|delete|close|remove|change|"
        r"update|upgrade|downgrade|pause|reactivate|unlock|merge|extend|transfer)\b",
        r"^\s*(please )?(cancel|delete|close|change|update|pause|unlock) (my|our)\b",
        r"\b(i want|i'd like|i need) you to "
        r"(cancel|delete|close|change|update|pause)\b",
        r"\b(delete|close|erase) (my|our) (account|data|profile)\b",
        # "how do I delete it? ... can you just do it for me?"
        r"\b(can|could|would) you (please )?(just )?do (it|that|this) for (me|us)\b",
        r"^\s*(please )?(change|transfer) (the )?(owner|ownership)\b",
        r"\b(können|könnten) sie\b.{0,40}\b(kündigen|löschen|ändern|stornieren)\b",
        r"\bbitte\b.{0,30}\b(kündigen|löschen|ändern|stornieren)\b",
        r"\b(puede|podría|pueden|podrían)n?\b.{0,20}\b(cancelar|eliminar|borrar|"
        r"cambiar)\b",
        r"\b(cancela|elimina|borra|cambia)d? (mi|nuestr[oa])\b",
        r"\b(pouvez|pourriez)[- ]vous\b.{0,20}\b(annuler|supprimer|résilier|changer|"
        r"modifier)\b",
        r"\b(annulez|supprimez|résiliez|changez|modifiez) (mon|ma|mes|notre|nos)\b",
    ],
}

# Claims no outgoing bot text may make (`unless_quoted`: see brain.config.PolicyRule).
POLICY_RULES: list[dict[str, str | bool]] = [
    dict(
        name="coupon_code",
        # a code-like token (capitals and digits) offered as a code
        pattern=r"\b(code|coupon|voucher)\b\W{0,4}(?-i:[A-Z][A-Z0-9]*\d[A-Z0-9]*)\b",
        why="no invented discount or coupon codes",
        unless_quoted=True,
    ),
    dict(
        name="discount_offer",
        pattern=r"\b(i|we)('ll| will| can| could| have| 've| am| are)?\s+(giving|give|"
        r"offer|offering|apply|applying|add|adding)\b.{0,40}\b(discount|coupon|voucher|"
        r"\d+\s?% off|credit)\b",
        why="no discounts the bot cannot grant",
        unless_quoted=True,
    ),
    dict(
        name="refund_promise",
        pattern=r"\b(i|we)('ll| will| have| 've| can| am| are)?\s+(refund|refunding|"
        r"reimburse|issue (you )?a refund|issued (you )?a refund)\b|\byour refund "
        r"(has been|is|was) (approved|processed|issued|on its way)\b",
        why="no promises of refunds; only the support team decides",
        unless_quoted=True,
    ),
    dict(
        name="approval",
        # the customer's case declared approved; "if the claim is approved" is policy
        pattern=r"\byour\b[^.!?]{0,40}\b(is|has been|was|got)\s+(now\s+)?approved\b|"
        r"\bi('ve| have)\s+(just\s+)?approved\b|\bi approve\b",
        why="the bot approves nothing",
    ),
    dict(
        name="claims_human",
        pattern=r"\bi('m| am)\s+(a\s+)?(real\s+|human\s+|live\s+)?(human|person|"
        r"(support )?agent|member of (the|our) (support )?team)\b|"
        r"\bich bin ein(e)? (mensch|mitarbeiter)|\bsoy una? (persona|humano|agente)\b|"
        r"\bje suis une? (humain|vraie personne|conseill)",
        why="never claim to be a person",
    ),
    dict(
        name="legal_advice",
        pattern=r"\b(you should|you could|you can|i (advise|recommend))\s+(sue|take "
        r"legal action|file a (lawsuit|claim|complaint in court))\b|\blegal advice\s*:",
        why="no legal advice",
    ),
]
