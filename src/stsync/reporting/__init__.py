"""The referral report: its arithmetic (``funnel``), its HTML page (``page``) and its
spreadsheet rows (``spreadsheet``). Pure: no request, no ledger, no terminal."""
