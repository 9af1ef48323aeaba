"""Every generated table, by its row type: in the order the engine deletes in (children before
parents) and in the order they are loaded (the other way).
"""

from __future__ import annotations

from tools.seed.aml import AmlRecord
from tools.seed.call_recordings import CallAnalysis, CallRecording
from tools.seed.contracts import Claim, Contract, PaymentMethod, Reimbursement
from tools.seed.cookie_consents import CookieConsent
from tools.seed.fraud import FraudAlert, FraudCase
from tools.seed.information_requests import InformationRequest
from tools.seed.job_applications import JobApplication
from tools.seed.marketing import MarketingContact, MarketingMessage
from tools.seed.prospects import Customer, Pet, Prospect
from tools.seed.quotes import Quote
from tools.seed.rights_requests import IdentityDocument, MarketingObjection
from tools.seed.rows import Row
from tools.seed.subscriber_services import ChatMessage, VetConsultation

# Children before parents (the order the engine deletes in); loading goes the other way.
ROW_TYPES: tuple[type[Row], ...] = (
    Reimbursement, Claim, PaymentMethod, AmlRecord, FraudAlert, FraudCase, CallAnalysis,
    CallRecording, Quote, Contract, MarketingMessage, MarketingContact, VetConsultation, ChatMessage,
    InformationRequest, IdentityDocument, MarketingObjection, CookieConsent, Pet, Prospect, Customer,
    JobApplication,
)  # fmt: skip
DELETE_ORDER = {row_type.TABLE: index for index, row_type in enumerate(ROW_TYPES)}
TABLES = tuple(row_type.TABLE for row_type in reversed(ROW_TYPES))  # load order
