"""Regenerates samples/expense-guide.pdf (text written by this project; needs `pip install fpdf2`)."""

from datetime import datetime, timezone

from fpdf import FPDF

PAGES = [
    (
        "Aurora Labs travel and expense guide",
        "Employees book business travel through the travel desk. Economy class is the standard for "
        "flights shorter than six hours; premium economy may be booked for longer flights.\n\n"
        "Hotel costs are reimbursed up to 180 euros per night in most cities and up to 260 euros per "
        "night in London, New York, Zurich and Tokyo.\n\n"
        "Meals during business travel are covered by a daily allowance of 45 euros.",
    ),
    (
        "Submitting expense reports",
        "Expense reports are submitted in the finance portal within 30 days of the end of the trip. "
        "Every expense above 25 euros needs a receipt.\n\n"
        "Reports are approved by the employee's manager and paid out with the next monthly salary. "
        "Questions about reimbursements go to the finance team at expenses@aurora-labs.example.",
    ),
]


def main(path: str = "samples/expense-guide.pdf") -> None:
    pdf = FPDF()
    pdf.set_creation_date(datetime(2026, 1, 1, tzinfo=timezone.utc))  # reproducible bytes
    for title, body in PAGES:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.multi_cell(0, 10, title)
        pdf.ln(4)
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, body)
    pdf.output(path)


if __name__ == "__main__":
    main()
