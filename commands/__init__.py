"""Chat commands: parsing, permissions and dispatch (DESIGN §5).

Each command is declared once; handlers reach the bot's services through the protocols this
package defines and never import `bot/` or nio. Filled in by the bot-core issue.
"""
