"""`ftl report`: plots and an HTML page of one run, or several overlaid (launcher/report/)."""
