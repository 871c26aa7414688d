"""ntmobile.wire"""
