"""The paper's findings as automatic checks (``inversionview reproduce``)."""
