"""Deterministic demo data: batch jobs, conversations and their enriched files.

Everything is derived from a seed, so a demo, a test and a benchmark built from the same
seed see the same rows, ids, timestamps and byte-identical enriched files.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

BASE_TIME = datetime(2026, 10, 1, 8, 0, 0, tzinfo=UTC)
VERTICAL = "financial_planning_consultant"
GENERATION_MODEL = "brightrun-conversation-generator-3.2"
TIERS = ("template", "scenario", "edge_case")
INELIGIBLE_STATUSES = ("failed", "enrichment_in_progress", "not_started")


@dataclass(frozen=True)
class DemoBatch:
    """A row of `batch_jobs`."""

    id: str
    name: str
    status: str
    tier: str | None
    total_items: int
    created_at: datetime


@dataclass(frozen=True)
class DemoBatchItem:
    """A row of `batch_items`; `conversation_id` is None until the item has produced one."""

    id: str
    batch_job_id: str
    conversation_id: str | None
    status: str
    created_at: datetime


@dataclass(frozen=True)
class DemoConversation:
    """A row of `conversations` with its Batch ID and the bytes of its enriched file."""

    row: dict[str, object]
    batch_id: str | None
    file_bytes: bytes | None

    @property
    def conversation_id(self) -> str:
        """The business key of the conversation."""
        return str(self.row["conversation_id"])


@dataclass(frozen=True)
class DemoDataset:
    """A small, complete set of source rows and files for demos and tests."""

    batches: list[DemoBatch]
    items: list[DemoBatchItem]
    conversations: list[DemoConversation]


# --- Scaffolding: consultant, personas, emotional arcs, training topics ------------------

_CONSULTANT: dict[str, object] = {
    "name": "Inès Halvorsen, CFP®",
    "business": "Harbourlight Financial Planning",
    "expertise": "fee-only planning for families navigating career and life transitions",
    "years_experience": 18,
    "core_philosophy": {
        "principle_1": "Feelings first — name the emotion before touching the numbers",
        "principle_2": "No shame, ever — every starting point is a workable starting point",
        "principle_3": "Teach the reasoning — clients deserve the “why” behind every step",
        "principle_4": "Small steps compound — one specific action beats a perfect plan",
        "principle_5": "Your values, your plan — rules of thumb serve the client, not the reverse",
    },
    "communication_style": {
        "tone": "calm, candid and kind; plain language over polish",
        "techniques": [
            "reflect the client’s own words back",
            "use everyday analogies for abstract ideas",
            "anchor advice in the client’s real numbers",
            "ask before explaining",
            "end with one concrete next step",
        ],
        "avoid": [
            "unexplained jargon",
            "assuming what the client already knows",
            "judging past decisions",
            "presenting more than two options at once",
            "promising returns or outcomes",
        ],
    },
}


@dataclass(frozen=True)
class _Persona:
    key: str
    full_name: str
    archetype: str
    background: str
    plural: str
    age: int
    currency: str
    partner: str
    relatives: tuple[str, ...]
    risk_tolerance: str
    lines: tuple[str, ...]

    @property
    def first_name(self) -> str:
        return self.full_name.split(" ", 1)[0]

    @property
    def display(self) -> str:
        return f"{self.full_name} — {self.archetype}"

    def money(self, amount: int) -> str:
        if self.currency == "kr":
            # Kronor amounts are about ten times larger and written Swedish-style.
            return f"{amount * 10:,}".replace(",", "\u202f") + "\u00a0kr"
        return f"{self.currency}{amount:,}"


@dataclass(frozen=True)
class _Arc:
    key: str
    name: str
    start_emotions: tuple[str, ...]
    end_emotions: tuple[str, ...]
    early: tuple[str, ...]
    late: tuple[str, ...]


@dataclass(frozen=True)
class _Topic:
    key: str
    name: str
    user: tuple[str, ...]
    education: tuple[str, ...]
    steps: tuple[str, ...]


_PERSONAS: tuple[_Persona, ...] = (
    _Persona(
        key="anxious_planner",
        full_name="Chloé Marchetti",
        archetype="The Anxious Planner",
        background=(
            "41, school psychologist in Lyon, two kids, keeps three budgeting apps and still "
            "feels one surprise away from trouble"
        ),
        plural="anxious planners",
        age=41,
        currency="€",
        partner="husband",
        relatives=("sister", "mum"),
        risk_tolerance="low",
        lines=(
            "I’ve checked our balance four times today and I know that isn’t normal.",
            "I have spreadsheets for everything, and somehow they make me more nervous, not less.",
            "I keep a list of everything that could go wrong, and it gets longer every month.",
        ),
    ),
    _Persona(
        key="pragmatic_optimist",
        full_name="Tomás Álvarez",
        archetype="The Pragmatic Optimist",
        background=(
            "49, logistics manager who moved from Seville to Rotterdam, likes a plan he can "
            "actually stick to"
        ),
        plural="pragmatic optimists",
        age=49,
        currency="€",
        partner="wife",
        relatives=("brother", "best friend"),
        risk_tolerance="moderate",
        lines=(
            "I’m not panicking, I just want a plan that survives contact with real life.",
            "Give me the trade-offs straight and I’ll make a call.",
            "We’re doing okay, but “okay” isn’t a plan.",
        ),
    ),
    _Persona(
        key="overwhelmed_avoider",
        full_name="Priya Raghunathan",
        archetype="The Overwhelmed Avoider",
        background=(
            "36, ICU nurse on rotating shifts in Leeds, with a drawer full of unopened "
            "pension letters"
        ),
        plural="overwhelmed avoiders",
        age=36,
        currency="£",
        partner="partner",
        relatives=("sister", "dad"),
        risk_tolerance="low",
        lines=(
            "There’s a drawer in my kitchen full of envelopes I haven’t opened.",
            "After a twelve-hour shift the last thing I can face is a login screen.",
            "I know ignoring it makes it worse — I just don’t know how to start.",
        ),
    ),
    _Persona(
        key="cautious_inheritor",
        full_name="Björn Åkesson",
        archetype="The Cautious Inheritor",
        background=(
            "58, retired civil engineer in Malmö who has just inherited his mother’s flat and "
            "doesn’t want to ‘waste it’"
        ),
        plural="cautious inheritors",
        age=58,
        currency="kr",
        partner="wife",
        relatives=("daughter", "cousin"),
        risk_tolerance="low",
        lines=(
            "I spent forty years building bridges; I’d like not to knock this one down.",
            "My daughter says I should enjoy it, but I was raised to keep everything for a "
            "rainy day.",
            "I don’t need more money, I need to stop worrying about the money I have.",
        ),
    ),
    _Persona(
        key="ambitious_overachiever",
        full_name="Zoë Okonkwo-Hart",
        archetype="The Ambitious Overachiever",
        background=(
            "33, product lead in London, high income, surprisingly little saved, compares "
            "herself with friends who already own homes"
        ),
        plural="ambitious overachievers",
        age=33,
        currency="£",
        partner="partner",
        relatives=("best friend", "brother"),
        risk_tolerance="high",
        lines=(
            "On paper I’m doing brilliantly, which is exactly why this feels so embarrassing.",
            "All my friends seem to own flats already and I’m still renting with nothing to "
            "show for it.",
            "I optimise everything at work and nothing at home.",
        ),
    ),
    _Persona(
        key="skeptical_diyer",
        full_name="Seán Ó Briain",
        archetype="The Skeptical DIYer",
        background=(
            "46, self-employed electrician in Cork who distrusts advisers and reads investing "
            "forums at midnight"
        ),
        plural="skeptical DIYers",
        age=46,
        currency="€",
        partner="wife",
        relatives=("brother", "accountant"),
        risk_tolerance="moderate",
        lines=(
            "I’ve built my own spreadsheet model, so I’ll probably check whatever you tell me.",
            "I don’t need hand-holding, I need someone to poke holes in my plan.",
            "Half the forum says one thing and the other half calls them idiots.",
        ),
    ),
    _Persona(
        key="newly_independent",
        full_name="Marisol Ferrer-Núñez",
        archetype="The Newly Independent",
        background=(
            "52, recently widowed teacher in Valencia who ran the household for years but "
            "never the investments"
        ),
        plural="newly independent clients",
        age=52,
        currency="$",
        partner="son",
        relatives=("son", "sister"),
        risk_tolerance="low",
        lines=(
            "I ran the household for thirty years, but the investments were always his department.",
            "I keep finding accounts I didn’t know existed.",
            "Some days I feel capable and some days I can’t open the post.",
        ),
    ),
)

_ARCS: tuple[_Arc, ...] = (
    _Arc(
        key="fear_to_confidence",
        name="Fear → Confidence",
        start_emotions=("fear", "anxiety"),
        end_emotions=("confidence", "relief"),
        early=(
            "I think what scares me most is making one wrong move that we can’t undo.",
            "I lie awake running through worst-case scenarios, and they all end with us "
            "losing the house.",
        ),
        late=(
            "I feel steadier than I have in years — not certain, just steady.",
            "It’s strange: the numbers haven’t changed much, but I’m not afraid of them anymore.",
        ),
    ),
    _Arc(
        key="overwhelm_to_empowerment",
        name="Overwhelm → Empowerment",
        start_emotions=("overwhelm", "confusion"),
        end_emotions=("empowerment", "determination"),
        early=(
            "There are so many accounts, logins and letters that I don’t even know where to start.",
            "Every article I read gives me five new things to worry about.",
        ),
        late=(
            "Having one list instead of fifty worries makes me feel like I’m in charge again.",
            "I explained the plan to my {relative} and it actually made sense out loud.",
        ),
    ),
    _Arc(
        key="shame_to_acceptance",
        name="Shame → Acceptance",
        start_emotions=("shame", "embarrassment"),
        end_emotions=("acceptance", "relief"),
        early=(
            "I haven’t told anyone this, not even my {relative}, but I took {amount} out of my "
            "pension last year.",
            "I earn decent money and I’m still broke at the end of the month, which is "
            "humiliating to admit.",
        ),
        late=(
            "I think I can stop punishing myself for the past and just work with where we are.",
            "Saying it out loud to you made it smaller somehow.",
        ),
    ),
    _Arc(
        key="couple_conflict_to_alignment",
        name="Couple Conflict → Alignment",
        start_emotions=("frustration", "resentment"),
        end_emotions=("alignment", "hope"),
        early=(
            "My {partner} thinks we’re “fine,” and every time I bring up money it turns into "
            "an argument.",
            "We keep having the same fight about money, just with different numbers.",
        ),
        late=(
            "We sat down together on Sunday and, for once, we wanted the same thing.",
            "It helps to have a plan we both chose, rather than one of us nagging the other.",
        ),
    ),
    _Arc(
        key="confusion_to_clarity",
        name="Confusion → Clarity",
        start_emotions=("confusion", "frustration"),
        end_emotions=("clarity", "curiosity"),
        early=(
            "Our old adviser in {city} told us something completely different, and now I’m "
            "just confused.",
            "I’ve read the terms three times and I still couldn’t tell you what I’m paying for.",
        ),
        late=(
            "That’s the first explanation that has actually made sense to me.",
            "I can finally see how the pieces fit together.",
        ),
    ),
    _Arc(
        key="grief_to_stability",
        name="Grief → Stability",
        start_emotions=("grief", "anxiety"),
        end_emotions=("stability", "calm"),
        early=(
            "Since the funeral I haven’t been able to face the paperwork, and now it’s piling up.",
            "They always handled the bills, and I’m realising how little I actually know.",
        ),
        late=(
            "It feels good to have a routine again, even a financial one.",
            "I’m not over it, but the money side no longer feels like another loss.",
        ),
    ),
    _Arc(
        key="skepticism_to_trust",
        name="Skepticism → Trust",
        start_emotions=("skepticism", "irritation"),
        end_emotions=("trust", "openness"),
        early=(
            "No offence, but the last adviser I saw mostly wanted to sell me a product.",
            "I’ve read enough forums to know most advice is either obvious or self-serving.",
        ),
        late=(
            "I appreciate that you showed me the maths instead of just asking me to trust you.",
            "Okay — I’m willing to try it your way for six months and see.",
        ),
    ),
)

_TOPICS: tuple[_Topic, ...] = (
    _Topic(
        key="mortgage_payoff_strategy",
        name="Mortgage Payoff Strategy",
        user=(
            "We still owe {amount} on the mortgage at {rate}% and I can’t decide whether "
            "overpaying is smart or just emotional.",
            "Everyone online says to invest instead of paying the mortgage early — is it crazy "
            "that I just want it gone?",
            "Our fixed rate ends in {years_short} years and I’m already dreading what the new "
            "rate will be.",
            "If we put an extra {small} a month towards the mortgage, would that actually "
            "change anything?",
            "My parents paid theirs off at fifty and still talk about it like the best day of "
            "their lives.",
        ),
        education=(
            "Here’s a concrete picture: on {amount} at {rate}%, an extra {small} a month would "
            "take roughly {years_short} years off the term.",
            "Overpaying is a guaranteed return equal to your rate, {rate}% — investing might "
            "beat that, but it isn’t guaranteed.",
            "There’s a middle path too: split any spare cash, so part goes to the mortgage and "
            "part to long-term investing.",
            "Before any overpayment, it’s worth checking whether your lender charges "
            "early-repayment fees above a yearly limit.",
            "Peace of mind is a legitimate financial goal; it just has to be weighed against "
            "flexibility, because money in the house is hard to get back out.",
        ),
        steps=(
            "This week, could you find your mortgage statement and note the exact balance, "
            "rate and any overpayment limit?",
            "A small next step: make a one-off overpayment of {small} and see how the "
            "statement changes next month.",
        ),
    ),
    _Topic(
        key="retirement_catch_up",
        name="Retirement Catch-Up at 45+",
        user=(
            "We’re {years} years from retirement and I genuinely don’t know if we’re on track "
            "or hopelessly behind.",
            "I read that the “4% rule” is dead — is that true, or just another scary headline?",
            "All I have is {amount} in a workplace pension and a vague feeling that it isn’t "
            "enough.",
            "I stopped contributing for a few years when the kids were small, and I think "
            "that’s what haunts me.",
            "How much would I actually need to put away each month to catch up?",
        ),
        education=(
            "The “4% rule” isn’t dead, but it’s a starting point, not a promise — we can "
            "stress-test it against your real numbers.",
            "With {years} years to go, even {small} a month grows meaningfully: at a modest "
            "{rate}% return that’s real momentum.",
            "Catch-up contributions exist precisely because so many people’s saving years get "
            "interrupted — you’re the rule, not the exception.",
            "Let’s separate what you need from what you’d like: the first number is usually "
            "smaller than the one keeping you up at night.",
            "Your pension, any state benefit and your home together form the picture; none of "
            "them has to carry the whole weight alone.",
        ),
        steps=(
            "This week, could you log in to your pension portal and write down today’s "
            "balance and your current contribution rate?",
            "One small step: raise your contribution by one percentage point — most people "
            "stop noticing it after the first payslip.",
        ),
    ),
    _Topic(
        key="emergency_fund_building",
        name="Emergency Fund Building",
        user=(
            "I keep reading that you’re supposed to have six months of expenses saved… we "
            "have maybe three weeks.",
            "Every time I build up a bit of savings, the car or the boiler eats it.",
            "We’ve got about {small} in savings on {amount} a year of income, and somehow that "
            "still feels fragile.",
            "What happens if one of us loses our job next year? I think about that more than "
            "I’d like to admit.",
        ),
        education=(
            "Think of an emergency fund like a shock absorber: it doesn’t stop the bumps, it "
            "just keeps them from breaking the car.",
            "Six months is a guideline, not a verdict — one month of essentials is a genuinely "
            "meaningful first milestone.",
            "Keeping the buffer in a separate, boring, easy-access account makes it much less "
            "tempting to dip into.",
            "The car and the boiler aren’t failures of saving; they’re exactly the expenses "
            "the fund exists for — it worked.",
        ),
        steps=(
            "A small, realistic next step would be to automate {small_monthly} a month into a "
            "separate easy-access account.",
            "This week, could you list your essential monthly costs? That number becomes our "
            "first target.",
        ),
    ),
    _Topic(
        key="debt_avalanche_vs_snowball",
        name="Debt Avalanche vs. Snowball",
        user=(
            "We have three credit cards and a car loan — about {amount} altogether — and I "
            "don’t know which to attack first.",
            "Someone told me to pay the smallest debt first, and someone else said that’s "
            "mathematically wrong.",
            "The card at {card_rate}% scares me the most, but the small one is the one that annoys "
            "me every month.",
            "I feel like I’m paying and paying and the balance barely moves.",
        ),
        education=(
            "The avalanche method targets the highest rate first, which saves the most "
            "interest; the snowball clears the smallest balance first, which builds momentum.",
            "Both methods work far better than no method — the best one is the one you’ll "
            "stick with on a bad month.",
            "At {card_rate}%, that card costs you roughly {small} a month in interest alone, which "
            "explains why the balance feels stuck.",
            "A balance transfer can buy breathing room, as long as we plan for the day the "
            "introductory rate ends.",
        ),
        steps=(
            "This week, could you write the balance, rate and minimum payment of each debt on "
            "one page?",
            "One small step: set every minimum payment to automatic so nothing slips while we "
            "decide on the order.",
        ),
    ),
    _Topic(
        key="inheritance_planning",
        name="Managing an Inheritance",
        user=(
            "We received an inheritance of roughly {amount} and I’m terrified of wasting it "
            "the way my parents did.",
            "It still feels like Mum’s money, not ours — spending any of it feels like a betrayal.",
            "Three different people have already told me exactly what to do with it, and they "
            "all disagree.",
            "Is it wrong that I just want to leave it sitting in the account for a year?",
        ),
        education=(
            "There’s no rush: parking the money somewhere safe for six to twelve months is a "
            "perfectly sound plan.",
            "It makes complete sense that you’d feel protective of this money; it carries your "
            "family’s story with it.",
            "Many people split an inheritance into three parts — security, goals, and "
            "something that honours the person.",
            "Before investing any of it, let’s check the tax position and whether any debts "
            "should go first.",
        ),
        steps=(
            "This week, could you move the money into a separate, clearly named savings "
            "account so it stops mixing with day-to-day spending?",
            "A small next step: write one sentence about what you think your mum would have "
            "wanted this money to do.",
        ),
    ),
    _Topic(
        key="college_savings",
        name="Saving for Kids’ University",
        user=(
            "Our eldest is {child_age} and I’ve only just realised how much university might cost.",
            "We’ve saved {small} for the kids so far and it feels like a drop in the ocean.",
            "Should we be saving for their education or for our own retirement? It feels "
            "selfish either way.",
            "My {relative} says the kids can take loans like everyone else, and I don’t know "
            "if that’s wise or heartless.",
        ),
        education=(
            "There’s a reason we say to put on your own oxygen mask first: your kids can "
            "borrow for university, but nobody lends for retirement.",
            "Starting now with {small_monthly} a month still adds up — time in the market does "
            "a lot of the heavy lifting.",
            "A tax-advantaged education or junior account can stretch every contribution "
            "further than a normal savings account.",
            "We can aim to cover part of the cost, say a third, which is very different from "
            "feeling you must cover all of it.",
        ),
        steps=(
            "This week, could you look up what a typical year of tuition and living costs "
            "looks like at one university your child is considering?",
            "A small step: open the children’s savings account and schedule {small_monthly} a "
            "month from the next payday.",
        ),
    ),
    _Topic(
        key="pension_consolidation",
        name="Consolidating Old Pensions",
        user=(
            "I’ve had five jobs and I think I have at least four old pensions floating around "
            "somewhere.",
            "I got a letter about a pension I’d completely forgotten — it says {amount}, which "
            "can’t be right.",
            "Is it worth combining them, or am I going to lose some guarantee I don’t understand?",
            "Every provider has a different login and I’ve locked myself out of two of them.",
        ),
        education=(
            "Combining pensions can cut fees and make the whole picture visible at a glance — "
            "often a bigger win than it sounds.",
            "Some older schemes carry valuable guarantees, so we’ll check each one before "
            "moving anything.",
            "Even a 0.5% difference in annual fees on {amount} compounds into a meaningful sum "
            "over {years} years.",
            "A single page listing every pot, its provider and its charges is the map we need "
            "before deciding anything.",
        ),
        steps=(
            "This week, could you gather the names of your past employers and the rough dates "
            "you worked there?",
            "One small step: request a statement from the scheme in that letter so we know "
            "exactly what it holds.",
        ),
    ),
    _Topic(
        key="self_employed_taxes",
        name="Taxes When Self-Employed",
        user=(
            "I’m self-employed and every January I get a tax bill that knocks the wind out of me.",
            "Last year I owed {amount} and had to put part of it on a card.",
            "My income swings wildly — {small} one month, nothing the next — so budgeting "
            "feels impossible.",
            "My {relative} keeps telling me to “just put some aside,” as if I hadn’t thought "
            "of that.",
        ),
        education=(
            "A separate tax pot, where a fixed share of every invoice goes the day it’s paid, "
            "turns the bill into a non-event.",
            "With irregular income, we budget from your lowest typical month and treat "
            "anything above that as a bonus.",
            "Setting aside around {pct}% of each payment is a reasonable starting point; we "
            "can refine it with your accountant.",
            "Paying on account feels brutal the first year, but after that it simply smooths "
            "the same bill over twelve months.",
        ),
        steps=(
            "This week, could you open a separate account just for tax and move {pct}% of your "
            "last invoice into it?",
            "One small step: add a line to your invoice checklist — “move {pct}% to tax” — so "
            "it happens without a decision.",
        ),
    ),
)

_GENERIC_USER: dict[str, tuple[str, ...]] = {
    "early": (
        "Honestly, I’ve been avoiding this conversation for months — every time I open my "
        "banking app my chest tightens.",
        "I feel a bit silly even asking this, but I don’t really know where our money goes "
        "each month.",
        "Sorry if this comes out jumbled; I rehearsed it in the car and it still doesn’t sound "
        "right.",
        "My {relative} keeps saying I’m overthinking it, which somehow makes it worse.",
        "I’m {age} and I always assumed I’d have this figured out by now.",
        "Part of me wants you to just tell me what to do, and part of me doesn’t trust anyone "
        "who would.",
    ),
    "middle": (
        "Okay, that actually makes sense. Can you say a bit more about what that would look "
        "like for us?",
        "I wrote down the numbers you asked for — it’s less terrible than I thought, but not "
        "by much.",
        "I talked it through with my {relative} last night and we didn’t argue, which is a first.",
        "What I’m still stuck on is the order: what do we do first, and what can wait?",
        "If we did that, how long before I’d actually notice a difference?",
        "I looked at the figures again this morning: {amount} in total, give or take.",
    ),
    "late": (
        "Writing it down like that makes it feel so much more manageable.",
        "I think I can actually do this — the first step doesn’t feel scary anymore.",
        "I set up the transfer this morning; it took four minutes, which is almost embarrassing.",
        "For the first time in ages I’m not dreading the next statement.",
        "Can we check in again in a couple of months to see how it’s going?",
    ),
}

_VALIDATION: dict[str, tuple[str, ...]] = {
    "early": (
        "First, I want to say — what you’re feeling is incredibly common, and it doesn’t mean "
        "you’ve failed.",
        "Thank you for trusting me with that, {first}; I know it wasn’t easy to put into words.",
        "Let’s slow down for a second and separate the feelings from the facts, because both "
        "matter.",
        "I can hear how much weight you’ve been carrying with this, and it makes sense that it "
        "feels heavy.",
        "Many of the clients I work with have been exactly where you are — often more than once.",
    ),
    "middle": (
        "You said something important a moment ago, and I don’t want us to skip past it.",
        "That’s a really good question, and the fact that you’re asking it tells me you’re "
        "already thinking like a planner.",
        "I’d gently push back on the idea that you’re “behind” — you’re starting from here, "
        "and here is workable.",
        "It sounds like the numbers are less frightening now that they’re on paper — that’s "
        "worth noticing.",
    ),
    "late": (
        "Let’s celebrate this for a moment: you took a step you’d been avoiding for months. "
        "That’s real progress.",
        "Listen to how differently you’re talking about this compared with when we started, "
        "{first}.",
        "You did the hard part already — the rest is mostly showing up and repeating it.",
        "I love that you set that up yourself; it means the plan is genuinely yours.",
    ),
}

_REFRAMES: tuple[str, ...] = (
    "Would it be okay if I walked you through how I’d think about this, step by step?",
    "There’s no “right” answer that fits everyone — there’s the answer that fits your values "
    "and your timeline.",
    "If it helps, we can write down the three decisions that actually matter this year and "
    "ignore the rest for now.",
    "Progress beats perfection here: a decent plan you follow is worth more than a perfect one "
    "you abandon.",
    "The goal isn’t to never feel anxious about money; it’s to have a plan that still works "
    "when you do.",
    "Let’s treat your past decisions as information, not as evidence against you.",
    "Rules of thumb are useful, but they were written for an average person, and you’re not "
    "an average — you’re you.",
    "I’d rather give you two clear options than ten half-explained ones.",
)

_CLOSERS: tuple[str, ...] = (
    "Before we meet again, just notice how you feel when you check your balance — no "
    "judgment, only notes.",
    "Send me a quick message once it’s done — I’d genuinely like to hear how it went.",
)

_INDICATORS: dict[str, tuple[str, ...]] = {
    "early": (
        "self-blame language",
        "catastrophizing about job loss",
        "“stomach drops”",
        "comparison to peers",
        "avoidance of statements",
        "repeated apologies",
        "“I don’t trust anyone”",
        "hedging every question",
        "humour as deflection",
    ),
    "late": (
        "future-focused questions",
        "spontaneous planning language",
        "“we” instead of “I”",
        "relaxed, longer answers",
        "asks for next steps",
        "acknowledges own progress",
    ),
}

_NEEDS = (
    "safety",
    "validation",
    "control",
    "clarity",
    "a concrete plan",
    "autonomy",
    "reassurance",
    "respect for past decisions",
)
_SKILLS = (
    "emotional_validation",
    "permission_based_education",
    "concrete_numbers",
    "reframing",
    "values_clarification",
    "normalizing",
    "metaphor_use",
    "next_step_commitment",
    "progress_celebration",
)
_REVIEWER_NOTES = (
    "Slightly long — trim the metaphor.",
    "Strong validation before facts.",
    "Good use of the client’s own numbers.",
    "Next step could be more specific.",
    "Tone is spot on; keep as a reference.",
    "Explains the trade-off without jargon — nice.",
    "A bit too many options in one reply.",
)
_OBJECTIVES = (
    "Guide {first} through {topic} while moving {arc}",
    "Help {first} make one confident decision about {topic} ({arc})",
    "Build {first}’s trust on {topic} while moving {arc}",
)
_CITIES = ("São Paulo", "Zürich", "Kraków", "Montréal", "Dún Laoghaire", "Reykjavík")
_READINESS = ("not_ready", "emerging", "ready", "committed")
_TRUST = ("guarded", "building", "established")

_PERSONA_BY_KEY = {p.key: p for p in _PERSONAS}
_ARC_BY_KEY = {a.key: a for a in _ARCS}
_TOPIC_BY_KEY = {t.key: t for t in _TOPICS}

PERSONA_KEYS: tuple[str, ...] = tuple(_PERSONA_BY_KEY)
EMOTIONAL_ARC_KEYS: tuple[str, ...] = tuple(_ARC_BY_KEY)
TOPIC_KEYS: tuple[str, ...] = tuple(_TOPIC_BY_KEY)

# (user sentences, assistant sentences) per conversation length: longer conversations get
# shorter turns so that files stay near the 50–90 kB of real enriched files.
_SENTENCES_PER_TURN: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {
    5: ((7, 9), (12, 15)),
    6: ((6, 8), (10, 13)),
    7: ((5, 7), (9, 11)),
    8: ((4, 6), (8, 9)),
}


def demo_consultant_profile() -> dict[str, object]:
    """The consultant every demo conversation is coached by (a fresh copy)."""
    return copy.deepcopy(_CONSULTANT)


# --- Enriched files -----------------------------------------------------------------------


@dataclass(frozen=True)
class _EnrichedDraft:
    document: dict[str, object]
    scores: dict[str, float]
    finished_at: datetime


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _phase(progress: float) -> str:
    if progress < 0.34:
        return "early"
    return "middle" if progress < 0.67 else "late"


def _pick(rng: random.Random, pool: Sequence[str], count: int) -> list[str]:
    if count <= len(pool):
        return rng.sample(pool, count)
    # Real transcripts repeat themselves; short pools do too.
    return rng.sample(pool, len(pool)) + rng.choices(pool, k=count - len(pool))


def _slots(rng: random.Random, persona: _Persona) -> dict[str, str]:
    return {
        "first": persona.first_name,
        "amount": persona.money(rng.randrange(18, 240) * 250),
        "small": persona.money(rng.randrange(4, 40) * 25),
        "small_monthly": persona.money(rng.choice((25, 50, 75, 100, 150, 200))),
        "rate": f"{rng.uniform(1.9, 7.4):.2f}",
        "card_rate": f"{rng.uniform(17.9, 29.9):.1f}",
        "years": str(rng.randint(8, 25)),
        "years_short": str(rng.randint(2, 9)),
        "pct": str(rng.choice((20, 25, 30))),
        "child_age": str(rng.randint(9, 16)),
        "age": str(persona.age),
        "partner": persona.partner,
        "relative": rng.choice(persona.relatives),
        "city": rng.choice(_CITIES),
    }


def _user_message(
    rng: random.Random, persona: _Persona, arc: _Arc, topic: _Topic, phase: str, count: int
) -> str:
    arc_lines = arc.late if phase == "late" else arc.early
    pool = (*_GENERIC_USER[phase], *topic.user, *persona.lines, *arc_lines)
    return " ".join(_pick(rng, pool, count)).format_map(_slots(rng, persona))


def _assistant_message(
    rng: random.Random, persona: _Persona, topic: _Topic, phase: str, count: int
) -> str:
    opener = rng.choice(_VALIDATION[phase])
    if phase == "late" and rng.random() < 0.04:
        opener += " 🙂"
    body = _pick(rng, (*topic.education, *_REFRAMES), max(count - 2, 1))
    closer = rng.choice(topic.steps) if rng.random() < 0.85 else rng.choice(_CLOSERS)
    return " ".join((opener, *body, closer)).format_map(_slots(rng, persona))


def _system_prompt(
    consultant: Mapping[str, object], persona: _Persona, arc: _Arc, topic: _Topic
) -> str:
    philosophy = consultant["core_philosophy"]
    style = consultant["communication_style"]
    assert isinstance(philosophy, Mapping) and isinstance(style, Mapping)
    principles = "\n".join(f"- {value}" for value in philosophy.values())
    return (
        f"You are an emotionally intelligent financial planning chatbot representing "
        f"{consultant['name']} of {consultant['business']}, specializing in "
        f"{consultant['expertise']} ({consultant['years_experience']} years of experience)."
        f"\n\nCore principles:\n{principles}\n\n"
        f"Tone: {style['tone']}.\n"
        f"Techniques: {'; '.join(style['techniques'])}.\n"
        f"Avoid: {'; '.join(style['avoid'])}.\n\n"
        f"Client: {persona.display}. Background: {persona.background}.\n"
        f"Emotional journey for this session: {arc.name}. Training topic: {topic.name}.\n\n"
        "Meet the client where they are: reflect their own words back before offering "
        "facts, ask permission before teaching, use their real numbers rather than averages, "
        "and close every answer with one small, specific next step they can take this week. "
        "Never shame, never rush, never promise returns, and never recommend a specific "
        "product; when a question needs a tax or legal specialist, say so plainly."
    )


def _quality(rng: random.Random, bias: float) -> tuple[float | int, dict[str, int]]:
    def criterion(*choices: int) -> int:
        return min(5, max(1, round(rng.choice(choices) + bias)))

    criteria = {
        "empathy_score": criterion(2, 3, 4, 4, 5, 5),
        "clarity_score": criterion(3, 3, 4, 4, 5, 5),
        "appropriateness_score": criterion(3, 4, 4, 5, 5),
        "brand_voice_alignment": criterion(2, 3, 4, 4, 5),
    }
    raw = sum(criteria.values()) / 4 + bias / 2 + rng.uniform(-0.7, 0.5)
    score = round(min(5.0, max(1.0, raw)), 1)
    # Upstream writes whole scores as integers (e.g. `5`), so the demo files do too.
    return (int(score) if score.is_integer() else score), criteria


def _extra_field(rng: random.Random) -> tuple[str, str, object] | None:
    """An unknown field some upstream versions add: (where, name, value) or None."""
    roll = rng.random()
    if roll < 0.2:
        return (
            "document",
            "generation_trace",
            {
                "enrichment_pipeline": "enrich-v2.4.1",
                "prompt_template": "fp_consultant_pairs_v7",
                "trace_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "token_usage": {
                    "prompt": rng.randint(9_000, 30_000),
                    "completion": rng.randint(2_000, 8_000),
                },
                "latency_ms": rng.randint(20_000, 95_000),
            },
        )
    if roll < 0.35:
        return (
            "pair",
            "annotations",
            {
                "flagged_spans": [rng.choice(_INDICATORS["early"])],
                "annotator": f"qa-rota-{rng.randint(1, 6)}",
                "comment": "Check the figure quoted in the second paragraph — it looks high.",
            },
        )
    return None


def _draft_enriched(
    rng: random.Random,
    conversation_id: str,
    persona: _Persona,
    arc: _Arc,
    topic: _Topic,
    started_at: datetime,
    consultant: Mapping[str, object],
) -> _EnrichedDraft:
    turns = rng.choices((5, 6, 7, 8), weights=(3, 4, 3, 2))[0]
    (user_lo, user_hi), (bot_lo, bot_hi) = _SENTENCES_PER_TURN[turns]
    metadata = {
        "client_persona": persona.display,
        "persona_archetype": persona.key,
        "client_background": persona.background,
        "emotional_arc": arc.name,
        "emotional_arc_key": arc.key,
        "training_topic": topic.name,
        "training_topic_key": topic.key,
    }
    system_prompt = _system_prompt(consultant, persona, arc, topic)
    objective = rng.choice(_OBJECTIVES).format(
        first=persona.first_name, topic=topic.name.lower(), arc=arc.name
    )
    difficulty = rng.choice(("beginner", "intermediate", "intermediate", "advanced"))
    # Some conversations come out of enrichment clearly better or worse than others.
    bias = rng.choice((-0.9, -0.5, -0.2, 0.0, 0.0, 0.2, 0.5, 0.9))
    extra = _extra_field(rng)
    extra_turn = rng.randint(1, turns)

    history: list[dict[str, object]] = []
    pairs: list[dict[str, object]] = []
    totals = dict.fromkeys(
        (
            "quality_score",
            "empathy_score",
            "clarity_score",
            "appropriateness_score",
            "brand_voice_alignment",
        ),
        0.0,
    )
    clock = started_at
    for turn in range(1, turns + 1):
        progress = (turn - 1) / (turns - 1)
        phase = _phase(progress)
        user_input = _user_message(rng, persona, arc, topic, phase, rng.randint(user_lo, user_hi))
        response = _assistant_message(rng, persona, topic, phase, rng.randint(bot_lo, bot_hi))
        emotions = arc.start_emotions if progress < 0.5 else arc.end_emotions
        primary, secondary = rng.sample(
            (*emotions, rng.choice(arc.end_emotions if progress < 0.5 else arc.start_emotions)),
            2,
        )
        primary_confidence = round(rng.uniform(0.55, 0.9), 2)
        secondary_confidence = round(rng.uniform(0.3, 0.75), 2)
        intensity = round(min(0.95, max(0.1, 0.85 - 0.5 * progress + rng.uniform(-0.1, 0.1))), 2)
        indicators = _INDICATORS["late" if phase == "late" else "early"]
        score, criteria = _quality(rng, bias)
        reviewed = rng.random() < 0.1
        notes = rng.choice(_REVIEWER_NOTES) if reviewed and rng.random() < 0.8 else None
        target = None if rng.random() < 0.1 else response
        clock += timedelta(seconds=rng.randint(14, 45))
        readiness = min(len(_READINESS) - 1, int(progress * 3 + rng.random() * 0.9))

        pair: dict[str, object] = {
            "id": f"{arc.key}_turn{turn}",
            "conversation_id": arc.key,
            "turn_number": turn,
            "conversation_metadata": metadata,
            "system_prompt": system_prompt,
            "conversation_history": list(history),
            "current_user_input": user_input,
            "emotional_context": {
                "detected_emotions": {
                    "primary": primary,
                    "primary_confidence": primary_confidence,
                    "secondary": secondary,
                    "secondary_confidence": secondary_confidence,
                    "intensity": intensity,
                },
                "emotional_indicators": rng.sample(indicators, rng.randint(2, 4)),
                "behavioral_assessment": {
                    "risk_tolerance": persona.risk_tolerance,
                    "decision_readiness": _READINESS[readiness],
                    "trust_level": _TRUST[min(2, int(progress * 3))],
                },
                "client_needs_hierarchy": rng.sample(_NEEDS, 3),
            },
            "target_response": target,
            "training_metadata": {
                "difficulty_level": difficulty,
                "key_learning_objective": objective,
                "demonstrates_skills": rng.sample(_SKILLS, rng.randint(2, 3)),
                "conversation_turn": turn,
                "emotional_progression_target": (
                    f"{primary}({primary_confidence:.1f}) → "
                    f"{secondary}({max(0.1, round(secondary_confidence - 0.4, 1)):.1f})"
                ),
                "quality_score": score,
                "quality_criteria": criteria,
                "human_reviewed": reviewed,
                "reviewer_notes": notes,
                "use_as_seed_example": score >= 4.5 and target is not None,
                "generation_timestamp": _iso_z(clock),
                "generation_model": GENERATION_MODEL,
            },
        }
        if extra is not None and extra[0] == "pair" and turn == extra_turn:
            pair[extra[1]] = extra[2]
        pairs.append(pair)

        totals["quality_score"] += score
        for name, value in criteria.items():
            totals[name] += value
        history.append({"turn_number": turn, "role": "user", "content": user_input})
        history.append({"turn_number": turn, "role": "assistant", "content": response})

    document: dict[str, object] = {
        "dataset_metadata": {
            "dataset_name": f"fp_conversation_{conversation_id}",
            "version": "1.0.0",
            "created_date": _iso_z(started_at),
            "vertical": VERTICAL,
            "total_conversations": 1,
            "total_turns": turns,
        },
        "consultant_profile": consultant,
        "training_pairs": pairs,
    }
    if extra is not None and extra[0] == "document":
        document[extra[1]] = extra[2]
    scores = {name: round(total / turns, 2) for name, total in totals.items()}
    return _EnrichedDraft(document, scores, clock)


def _dump(document: Mapping[str, object]) -> bytes:
    # Same bytes as json.dumps(document, indent=2, ensure_ascii=False).encode().
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def _content_rng(seed: int, conversation_id: str, revision: int) -> random.Random:
    # Seeded per conversation so one file can be re-rendered without replaying a dataset.
    return random.Random(f"brightrun-demo:{seed}:{conversation_id}:{revision}")


def _lookup(
    persona_key: str, emotional_arc_key: str, topic_key: str
) -> tuple[_Persona, _Arc, _Topic]:
    try:
        return (
            _PERSONA_BY_KEY[persona_key],
            _ARC_BY_KEY[emotional_arc_key],
            _TOPIC_BY_KEY[topic_key],
        )
    except KeyError as missing:
        raise ValueError(f"unknown demo scaffolding key {missing}") from None


def _draft_for(
    conversation_id: str,
    *,
    persona_key: str,
    emotional_arc_key: str,
    topic_key: str,
    created_at: datetime,
    seed: int,
    revision: int,
    consultant_profile: Mapping[str, object] | None,
) -> _EnrichedDraft:
    persona, arc, topic = _lookup(persona_key, emotional_arc_key, topic_key)
    return _draft_enriched(
        _content_rng(seed, conversation_id, revision),
        conversation_id,
        persona,
        arc,
        topic,
        created_at,
        _CONSULTANT if consultant_profile is None else consultant_profile,
    )


def render_enriched_file(
    conversation_id: str,
    *,
    persona_key: str,
    emotional_arc_key: str,
    topic_key: str,
    created_at: datetime,
    seed: int = 7,
    revision: int = 0,
    consultant_profile: Mapping[str, object] | None = None,
) -> bytes:
    """The enriched.json bytes of one demo conversation; another `revision` is a re-enrichment."""
    draft = _draft_for(
        conversation_id,
        persona_key=persona_key,
        emotional_arc_key=emotional_arc_key,
        topic_key=topic_key,
        created_at=created_at,
        seed=seed,
        revision=revision,
        consultant_profile=consultant_profile,
    )
    return _dump(draft.document)


# --- Source rows --------------------------------------------------------------------------


def _new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _random_scores(rng: random.Random) -> dict[str, float]:
    names = (
        "quality_score",
        "empathy_score",
        "clarity_score",
        "appropriateness_score",
        "brand_voice_alignment",
    )
    return {name: round(rng.uniform(2.4, 4.9), 2) for name in names}


def _conversation(
    rng: random.Random,
    seed: int,
    *,
    persona: _Persona,
    tier: str,
    created_at: datetime,
    created_by: str,
    batch_id: str | None,
    status: str = "completed",
    has_file: bool = True,
    unscored: bool = False,
) -> DemoConversation:
    row_id = _new_uuid(rng)
    conversation_id = _new_uuid(rng)
    arc = rng.choice(_ARCS)
    topic = rng.choice(_TOPICS)
    file_bytes: bytes | None = None
    scores: dict[str, float] | None = None
    path: str | None = None
    if status == "completed" and has_file:
        draft = _draft_enriched(
            _content_rng(seed, conversation_id, 0),
            conversation_id,
            persona,
            arc,
            topic,
            created_at,
            _CONSULTANT,
        )
        file_bytes = _dump(draft.document)
        scores = draft.scores
        path = f"{created_by}/{conversation_id}/enriched.json"
        updated_at = draft.finished_at + timedelta(seconds=rng.randint(5, 90))
    elif status == "completed":
        scores = _random_scores(rng)
        updated_at = created_at + timedelta(seconds=rng.randint(120, 400))
    elif status == "not_started":
        updated_at = created_at
    else:
        updated_at = created_at + timedelta(seconds=rng.randint(30, 300))
    if unscored:
        scores = None

    def score(name: str) -> float | None:
        return None if scores is None else float(scores[name])

    row: dict[str, object] = {
        "id": row_id,
        "conversation_id": conversation_id,
        "title": f"{persona.first_name} — {topic.name} ({arc.name})",
        "persona_key": persona.key,
        "emotional_arc_key": arc.key,
        "topic_key": topic.key,
        "tier": tier,
        "quality_score": score("quality_score"),
        "empathy_score": score("empathy_score"),
        "clarity_score": score("clarity_score"),
        "appropriateness_score": score("appropriateness_score"),
        "brand_voice_alignment": score("brand_voice_alignment"),
        "enrichment_status": status,
        "enriched_file_path": path,
        "created_by": created_by,
        "created_at": created_at,
        "updated_at": updated_at,
    }
    return DemoConversation(row=row, batch_id=batch_id, file_bytes=file_bytes)


def _ineligible_status(index: int, total: int) -> str:
    """The enrichment status of the index-th ineligible conversation of a dataset."""
    # Exactly one of them (the second, when there are several) is "completed" yet has no
    # file: the case that status checks alone would miss.
    special = 1 if total > 1 else -1
    if index == special:
        return "completed"
    return INELIGIBLE_STATUSES[(index - (index > special)) % len(INELIGIBLE_STATUSES)]


def generate_demo_dataset(
    seed: int = 7,
    *,
    batches: int = 3,
    conversations_per_batch: int = 12,
    unbatched: int = 2,
    ineligible_per_batch: int = 1,
) -> DemoDataset:
    """A small, realistic set of batches, conversations and enriched files for demos and tests."""
    if min(batches, conversations_per_batch, unbatched, ineligible_per_batch) < 0:
        raise ValueError("demo dataset sizes must not be negative")
    if ineligible_per_batch > conversations_per_batch:
        raise ValueError("ineligible_per_batch cannot exceed conversations_per_batch")
    rng = random.Random(f"brightrun-demo-dataset:{seed}")
    users = [_new_uuid(rng) for _ in range(3)]
    out_batches: list[DemoBatch] = []
    items: list[DemoBatchItem] = []
    conversations: list[DemoConversation] = []
    total_ineligible = batches * ineligible_per_batch
    ineligible_seen = 0
    clock = BASE_TIME - timedelta(hours=1)

    for number in range(batches):
        created = max(BASE_TIME + timedelta(days=number), clock + timedelta(minutes=10))
        persona = rng.choice(_PERSONAS)
        tier = TIERS[number % len(TIERS)]
        creator = rng.choice(users)
        batch = DemoBatch(
            id=_new_uuid(rng),
            name=f"Batch {created:%Y-%m-%d} · {persona.plural}",
            status="completed",
            tier=tier,
            total_items=conversations_per_batch + 1,
            created_at=created,
        )
        out_batches.append(batch)
        ineligible_slots = set(rng.sample(range(conversations_per_batch), ineligible_per_batch))
        eligible_slots = [i for i in range(conversations_per_batch) if i not in ineligible_slots]
        # Guarantees that every default dataset has an unscored but eligible conversation.
        forced_unscored = (
            eligible_slots[min(2, len(eligible_slots) - 1)]
            if (number == 0 and eligible_slots)
            else None
        )
        clock = created + timedelta(seconds=30)
        for slot in range(conversations_per_batch):
            clock += timedelta(seconds=rng.randint(40, 110))
            status, has_file = "completed", True
            if slot in ineligible_slots:
                status, has_file = _ineligible_status(ineligible_seen, total_ineligible), False
                ineligible_seen += 1
            conversation = _conversation(
                rng,
                seed,
                persona=persona if rng.random() < 0.7 else rng.choice(_PERSONAS),
                tier=tier,
                created_at=clock,
                created_by=creator,
                batch_id=batch.id,
                status=status,
                has_file=has_file,
                unscored=slot == forced_unscored or rng.random() < 0.05,
            )
            conversations.append(conversation)
            items.append(
                DemoBatchItem(
                    id=_new_uuid(rng),
                    batch_job_id=batch.id,
                    conversation_id=conversation.conversation_id,
                    status="completed",
                    created_at=created + timedelta(seconds=slot),
                )
            )
        items.append(
            DemoBatchItem(
                id=_new_uuid(rng),
                batch_job_id=batch.id,
                conversation_id=None,
                status="queued",
                created_at=created + timedelta(seconds=conversations_per_batch),
            )
        )

    clock = max(BASE_TIME + timedelta(days=batches), clock) + timedelta(hours=2)
    for _ in range(unbatched):
        clock += timedelta(seconds=rng.randint(300, 3_600))
        conversations.append(
            _conversation(
                rng,
                seed,
                persona=rng.choice(_PERSONAS),
                tier=rng.choice(TIERS),
                created_at=clock,
                created_by=rng.choice(users),
                batch_id=None,
            )
        )
    return DemoDataset(batches=out_batches, items=items, conversations=conversations)


def iter_demo_conversations(
    seed: int, count: int, *, batch_size: int = 80
) -> Iterator[tuple[DemoBatch | None, DemoBatchItem | None, DemoConversation]]:
    """Stream `count` eligible demo conversations, a new batch every `batch_size`, lazily."""
    if count < 0:
        raise ValueError("count must not be negative")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return _stream_conversations(seed, count, batch_size)


def _stream_conversations(
    seed: int, count: int, batch_size: int
) -> Iterator[tuple[DemoBatch | None, DemoBatchItem | None, DemoConversation]]:
    rng = random.Random(f"brightrun-demo-stream:{seed}")
    users = [_new_uuid(rng) for _ in range(5)]
    clock = BASE_TIME - timedelta(hours=1)
    for number, start in enumerate(range(0, count, batch_size)):
        size = min(batch_size, count - start)
        created = max(BASE_TIME + timedelta(hours=4 * number), clock + timedelta(minutes=5))
        persona = rng.choice(_PERSONAS)
        tier = TIERS[number % len(TIERS)]
        creator = rng.choice(users)
        batch = DemoBatch(
            id=_new_uuid(rng),
            name=f"Batch {created:%Y-%m-%d %H:%M} · {persona.plural}",
            status="completed",
            tier=tier,
            total_items=size,
            created_at=created,
        )
        clock = created + timedelta(seconds=30)
        for slot in range(size):
            clock += timedelta(seconds=rng.randint(40, 110))
            conversation = _conversation(
                rng,
                seed,
                persona=persona if rng.random() < 0.7 else rng.choice(_PERSONAS),
                tier=tier,
                created_at=clock,
                created_by=creator,
                batch_id=batch.id,
                unscored=rng.random() < 0.04,
            )
            item = DemoBatchItem(
                id=_new_uuid(rng),
                batch_job_id=batch.id,
                conversation_id=conversation.conversation_id,
                status="completed",
                created_at=created + timedelta(seconds=slot),
            )
            yield batch, item, conversation


def reenrich_conversation(
    conversation: DemoConversation, *, seed: int = 7, revision: int = 1
) -> DemoConversation:
    """The same conversation after its enrichment was re-run: new file, scores and updated_at."""
    row = conversation.row
    if row["enrichment_status"] != "completed" or row["enriched_file_path"] is None:
        raise ValueError("only a conversation with an enriched file can be re-enriched")
    updated_at = row["updated_at"]
    assert isinstance(updated_at, datetime)
    draft = _draft_for(
        conversation.conversation_id,
        persona_key=str(row["persona_key"]),
        emotional_arc_key=str(row["emotional_arc_key"]),
        topic_key=str(row["topic_key"]),
        created_at=updated_at + timedelta(hours=1),
        seed=seed,
        revision=revision,
        consultant_profile=None,
    )
    new_row = dict(row)
    new_row.update({name: float(value) for name, value in draft.scores.items()})
    new_row["updated_at"] = draft.finished_at + timedelta(seconds=30)
    return DemoConversation(
        row=new_row, batch_id=conversation.batch_id, file_bytes=_dump(draft.document)
    )
